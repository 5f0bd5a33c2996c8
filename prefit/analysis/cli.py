"""The command lines: `python -m prefit.analyze SWEEP [SWEEP ...]` and `python -m prefit.report` (the protocol
report; `robustness SWEEP_A SWEEP_B`, `resolution SWEEP [SWEEP ...]` and `families SWEEP [SWEEP ...]` as a first
argument for those), each with
`--out` and the analysis options `--psnr-cap DB` (`none`: no capped AUC) and `--ci-method percentile|bca`, whose
defaults are prefit.analysis.pipeline.Options'. Where a command takes several folders for one sweep, they are one
study's cells run apart (other machines, other days), analysed as one (prefit.analysis.folders). Unusable input, a
bad option included, ends with one line, `error: ...`, on stderr and exit status 2: never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from prefit.errors import OneLineParser, fail
from prefit.schema import ANALYSIS_DIR

from .axis import Axis, write_axis_report
from .axis import default_out as axis_out
from .families import AXIS as FAMILIES
from .load import AnalysisError
from .pipeline import DEFAULT_OPTIONS, Options, analysis_dir, analyze
from .protocol import DEFAULT_NAME, default_report, write_report
from .reduce import QUANTISATION_PSNR_DB
from .resolution import AXIS as RESOLUTION
from .robustness import default_out, write_robustness_report
from .stats import CI_METHODS

Action = Callable[[argparse.Namespace, Options], str]  # what a command does with its arguments and options
SEVERAL = " (several folders: one study's cells, merged)"
REPORT_SWEEPS = {"--independent": "a sweep run with protocol=independent (required)" + SEVERAL}
REPORT_SWEEPS["--chained"] = "a sweep run with protocol=chained (required)" + SEVERAL
REPORT_SWEEPS["--robust"] = "a rerun of some cells with other arithmetic: adds a robustness section" + SEVERAL
REPORT_SWEEPS["--resolution"] = "some cells at several dataset.resolution: adds a resolution section" + SEVERAL
REPORT_SWEEPS["--families"] = "some cells fit by several model families: adds a section Beyond SIREN" + SEVERAL
MANY = {"sweep", *REPORT_SWEEPS}  # the arguments that take one folder or several of one study


def psnr_cap(value: str) -> float | None:
    """--psnr-cap: a number of dB, or none/null/off."""
    if value.strip().lower() in ("none", "null", "off"):
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of dB or none, got {value!r}") from None


def run(prog: str, about: str, out: str, argv: Sequence[str] | None, action: Action, *sweeps: str) -> int:
    """Parse argv (the sweep folders `sweeps`: positional, or flags such as --chained; those in MANY take one folder
    or several; --out with the help `out`; the analysis options), run the action, print what it wrote; one line and
    exit status 2 on bad input."""
    p = OneLineParser(prog=f"python -m prefit.{prog}", description=about, raises=AnalysisError)
    for name in sweeps:
        flag = name.startswith("-")
        options = {"required": "(required)" in REPORT_SWEEPS[name], "help": REPORT_SWEEPS[name]} if flag else {}
        options |= {"nargs": "+"} if name in MANY else {}
        options |= {} if flag or name not in MANY else {"help": "a sweep folder" + SEVERAL}
        p.add_argument(name, metavar="SWEEP" if flag else name.upper(), **options)
    p.add_argument("--out", type=Path, default=None, help=out)
    cap, method = DEFAULT_OPTIONS.psnr_cap, DEFAULT_OPTIONS.ci_method
    cap_help = f"the capped AUC's cap (default {cap:g} dB, 8-bit quantisation: {QUANTISATION_PSNR_DB:.1f}; none: off)"
    p.add_argument("--psnr-cap", type=psnr_cap, default=cap, metavar="DB", help=cap_help)
    method_help = f"the bootstrap CI method (default {method})"
    p.add_argument("--ci-method", type=str.lower, choices=CI_METHODS, default=method, help=method_help)
    try:
        args = p.parse_intermixed_args(argv)
        print(action(args, Options(args.psnr_cap, args.ci_method)))
    except (AnalysisError, OSError) as exc:
        return fail(exc)
    return 0


def analyze_main(argv: Sequence[str] | None = None) -> int:
    """`python -m prefit.analyze SWEEP [SWEEP ...] [--out DIR] [options]`: the analysis files of one sweep, or of
    several folders of one study as one."""

    def action(args: argparse.Namespace, options: Options) -> str:
        out = args.out if args.out is not None else analysis_dir(args.sweep)
        return f"wrote {len(analyze(args.sweep, out, options))} files to {out}"

    about = "Curves, AUCs, paired statistics and verdicts, figures and a summary of a prefit sweep. Several SWEEP "
    about += "folders are one study's cells run apart (other machines, other days), analysed as one: a cell in two "
    about += "folders is read once when both copies are of the same study with the same psnr.parquet, and refused "
    about += "otherwise."
    out = f"output folder (default: SWEEP/{ANALYSIS_DIR}; with several folders, the first one's {ANALYSIS_DIR}/)"
    return run("analyze", about, out, argv, action, "sweep")


def report_main(argv: Sequence[str] | None = None) -> int:
    """`python -m prefit.report`: the protocol report; with a first argument `robustness`, `resolution` or
    `families`, those."""
    argv = list(sys.argv[1:] if argv is None else argv)
    others = {"robustness": robustness_main, "resolution": resolution_main, "families": families_main}
    if argv[:1] and argv[0] in others:
        return others[argv[0]](argv[1:])

    def action(args: argparse.Namespace, options: Options) -> str:
        out = args.out if args.out is not None else default_report(args.independent)
        sweeps = (args.independent, args.chained, out, options, args.robust, args.resolution, args.families)
        written = write_report(*sweeps)
        return f"wrote {out} and {len(written) - 1} more file(s) in {out.with_suffix('')}"

    about = "The protocol report: a sweep run under protocol=chained beside one under protocol=independent. "
    about += "`robustness A B` compares two sweeps that differ only in arithmetic, `resolution SWEEP` image sizes, "
    about += "`families SWEEP` model families."
    out = f"the report (default: {DEFAULT_NAME} beside the (first) independent sweep); its figures: the folder of its "
    out += "name"
    return run("report", about, out, argv, action, *REPORT_SWEEPS)


def robustness_main(argv: Sequence[str]) -> int:
    """`python -m prefit.report robustness SWEEP_A SWEEP_B [--out FILE] [options]`."""

    def action(args: argparse.Namespace, options: Options) -> str:
        out = args.out if args.out is not None else default_out(args.sweep_a, args.sweep_b)
        written = write_robustness_report(args.sweep_a, args.sweep_b, out, options)
        return f"wrote {out} and its figure {written[out.with_suffix('.png').name]}"

    about = "Do two sweeps of the same cells and triples that differ only in arithmetic reach the same verdicts?"
    out = "the report (default: robustness_A_vs_B.md beside sweep A); its figure goes beside it, same name, .png"
    return run("report robustness", about, out, argv, action, "sweep_a", "sweep_b")


def axis_main(axis: Axis, about: str, argv: Sequence[str]) -> int:
    """`python -m prefit.report NAME SWEEP [SWEEP ...] [--out FILE] [options]`: the report over a study axis."""

    def action(args: argparse.Namespace, options: Options) -> str:
        out = args.out if args.out is not None else axis_out(axis, args.sweep)
        written = write_axis_report(axis, args.sweep, out, options)
        return f"wrote {out} and {len(written) - 1} figure(s) in {out.with_suffix('')}"

    out = f"the report (default: {axis.default_name} beside the (first) sweep); its figures: the folder of its name"
    return run(f"report {axis.name}", about, out, argv, action, "sweep")


def resolution_main(argv: Sequence[str]) -> int:
    """`python -m prefit.report resolution SWEEP [SWEEP ...] [--out FILE] [options]`."""
    about = "Verdicts of one sweep's cells at several image sizes (jobs that differ only in dataset.resolution)."
    return axis_main(RESOLUTION, about, argv)


def families_main(argv: Sequence[str]) -> int:
    """`python -m prefit.report families SWEEP [SWEEP ...] [--out FILE] [options]`."""
    about = "Verdicts of one sweep's cells fit by several model families (jobs that differ only in model.family and "
    about += "the settings each family's config sets: model.w0, model.sigma, model.features, model.scale, train.lr)."
    return axis_main(FAMILIES, about, argv)
