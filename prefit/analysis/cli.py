"""The command lines of the analysis (`python -m prefit.analyze`) and of the reports (`python -m prefit.report`).

    python -m prefit.analyze SWEEP [--out DIR] [analysis.psnr_cap=59] [analysis.ci_method=bca]
    python -m prefit.report --independent SWEEP_I --chained SWEEP_C [--out FILE] [--robust SWEEP_R] [analysis.*=...]
    python -m prefit.report robustness SWEEP_A SWEEP_B [--out FILE] [analysis.*=...]
    python -m prefit.report resolution SWEEP [--out FILE] [analysis.*=...]

Options are spelled as flags (`--psnr-cap 59`, `--ci-method bca`) or as the project's Hydra keys
(`analysis.psnr_cap=59`, `analysis.ci_method=bca`); given both ways they must agree. `analysis.psnr_cap`
defaults to 59 dB (`null` turns the capped AUC off). Unusable input, a bad option included, ends with one line,
`error: ...`, on stderr and exit status 2: never a traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from prefit.schema import ANALYSIS_DIR

from .load import AnalysisError, one_line
from .pipeline import analyze
from .protocol import DEFAULT_NAME, default_report, write_report
from .reduce import DEFAULT_PSNR_CAP, QUANTISATION_PSNR_DB
from .resolution import DEFAULT_NAME as RESOLUTION_NAME
from .resolution import write_resolution_report
from .robustness import default_out, write_robustness_report
from .stats import CI_METHODS, DEFAULT_CI_METHOD

OVERRIDE_PATTERN = re.compile(r"\+?[A-Za-z_]\w*(\.\w+)+=.*")  # a Hydra-style key=value, e.g. analysis.psnr_cap=59
NULLS = ("null", "none", "off", "~", "")
CAP_HELP = (
    f"AUC with PSNR clipped at DB, and epochs to 59 dB (default {DEFAULT_PSNR_CAP:g}, the PSNR of 8-bit "
    f"quantisation, 10 log10(12 x 255^2) = {QUANTISATION_PSNR_DB:.1f} dB; null: off)"
)
METHOD_HELP = f"bootstrap CI method: {' or '.join(CI_METHODS)} (default {DEFAULT_CI_METHOD})"


def parse_cap(value: str) -> float | None:
    """A PSNR cap in dB, or None for null/none/off."""
    if value.strip().lower() in NULLS:
        return None
    try:
        return float(value)
    except ValueError:
        raise AnalysisError(f"analysis.psnr_cap must be a number of dB or null, got {value!r}") from None


def parse_method(value: str) -> str:
    """A bootstrap CI method, case-insensitive."""
    method = value.strip().lower()
    if method not in CI_METHODS:
        raise AnalysisError(f"analysis.ci_method must be one of {', '.join(CI_METHODS)}, got {value!r}")
    return method


OVERRIDES: dict[str, Callable[[str], object]] = {"analysis.psnr_cap": parse_cap, "analysis.ci_method": parse_method}


def split_overrides(tokens: Iterable[str]) -> tuple[list[str], dict[str, object]]:
    """Separate Hydra-style `analysis.KEY=VALUE` overrides (parsed) from the other positional arguments."""
    positional, overrides = [], {}
    for token in tokens:
        if not OVERRIDE_PATTERN.fullmatch(token):
            positional.append(token)
            continue
        key, _, value = token.partition("=")
        key = key.lstrip("+")
        if key not in OVERRIDES:
            raise AnalysisError(f"unknown override {token!r} (known: {', '.join(k + '=...' for k in OVERRIDES)})")
        overrides[key] = OVERRIDES[key](value)
    return positional, overrides


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one `error: ...` line (AnalysisError) instead of usage and a message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise AnalysisError(f"{message} (see {self.prog} --help)")


def _parser(prog: str, description: str, epilog: str = "") -> _Parser:
    parser = _Parser(prog=prog, description=description, epilog=epilog)
    parser.add_argument("--psnr-cap", default=None, metavar="DB", help=CAP_HELP)
    parser.add_argument("--ci-method", default=None, metavar="METHOD", help=METHOD_HELP)
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="analysis.KEY=VALUE",
        help="Hydra-style spelling of the options: analysis.psnr_cap=DB, analysis.ci_method=NAME",
    )
    return parser


def resolve(args: argparse.Namespace, overrides: dict[str, object]) -> tuple[float | None, str]:
    """The PSNR cap and CI method from the flags and the overrides; both given must agree."""
    values = []
    for flag, key, parse, default in (
        ("psnr_cap", "analysis.psnr_cap", parse_cap, DEFAULT_PSNR_CAP),
        ("ci_method", "analysis.ci_method", parse_method, DEFAULT_CI_METHOD),
    ):
        given = getattr(args, flag)
        value = parse(given) if given is not None else default
        if key in overrides:
            if given is not None and overrides[key] != value:
                raise AnalysisError(f"--{flag.replace('_', '-')} {given} and {key}={overrides[key]} disagree: give one")
            value = overrides[key]
        values.append(value)
    return values[0], values[1]


def _parse(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, sweeps: int, names: str
) -> tuple[argparse.Namespace, list[str], float | None, str]:
    """The parsed flags, the `sweeps` sweep folders named `names` (one line if the count is wrong), the cap and
    the CI method (from flags or analysis.KEY=VALUE overrides)."""
    args = parser.parse_intermixed_args(argv)
    positional, overrides = split_overrides(args.overrides)
    if len(positional) != sweeps:
        raise AnalysisError(f"expected {names}, got {len(positional)}: {' '.join(positional)}".rstrip(": "))
    psnr_cap, ci_method = resolve(args, overrides)
    return args, positional, psnr_cap, ci_method


def _run(action: Callable[[], str]) -> int:
    try:
        print(action())
    except (AnalysisError, OSError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    return 0


def analyze_main(argv: Sequence[str] | None = None) -> int:
    """`python -m prefit.analyze SWEEP [--out DIR] [options]`: the analysis files of one sweep."""
    parser = _parser(
        "python -m prefit.analyze",
        "Curves, AUCs, paired statistics and verdicts, figures and a summary of a prefit sweep.",
        "Example: python -m prefit.analyze outputs/sweeps/run",
    )
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default: SWEEP/{ANALYSIS_DIR})")

    def action() -> str:
        args, positional, psnr_cap, ci_method = _parse(parser, argv, 1, "one SWEEP folder")
        outputs = analyze(positional[0], args.out, psnr_cap, ci_method)
        out = args.out if args.out is not None else Path(positional[0]) / ANALYSIS_DIR
        return f"wrote {len(outputs)} files to {out}"

    return _run(action)


def report_main(argv: Sequence[str] | None = None) -> int:
    """`python -m prefit.report`: the protocol report, or with a first argument `robustness` the robustness one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["robustness"]:
        return robustness_main(argv[1:])
    if argv[:1] == ["resolution"]:
        return resolution_main(argv[1:])
    parser = _parser(
        "python -m prefit.report",
        "Compare a sweep run under protocol=chained with one under "
        "protocol=independent (docs/findings.md and its figures). `python -m prefit.report robustness "
        "A B` compares two sweeps that differ only in arithmetic; `python -m prefit.report "
        "resolution SWEEP` one sweep's cells at several image sizes.",
    )
    parser.add_argument("--independent", required=True, help="sweep folder run with protocol=independent")
    parser.add_argument("--chained", required=True, help="sweep folder run with protocol=chained")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"the report (default: {DEFAULT_NAME} beside the "
        "independent sweep; `make report` writes docs/findings.md); its "
        "figures go into the folder of the same name without the suffix",
    )
    parser.add_argument(
        "--robust",
        default=None,
        metavar="SWEEP",
        help="a rerun of some of the same cells with other arithmetic: adds a robustness section",
    )
    parser.add_argument(
        "--resolution",
        default=None,
        metavar="SWEEP",
        help="a sweep of some cells at several dataset.resolution values: adds a resolution section",
    )

    def action() -> str:
        args = parser.parse_intermixed_args(argv)
        positional, overrides = split_overrides(args.overrides)
        if positional:
            raise AnalysisError(
                f"unexpected argument(s): {' '.join(positional)} (use --independent/--chained, or `robustness A B`)"
            )
        psnr_cap, ci_method = resolve(args, overrides)
        out = args.out if args.out is not None else default_report(args.independent)
        outputs = write_report(
            args.independent, args.chained, out, psnr_cap, ci_method, args.robust, resolution=args.resolution
        )
        return f"wrote {out} and {len(outputs) - 1} more file(s) in {out.with_suffix('')}"

    return _run(action)


def robustness_main(argv: Sequence[str]) -> int:
    """`python -m prefit.report robustness SWEEP_A SWEEP_B [--out FILE] [options]`."""
    parser = _parser(
        "python -m prefit.report robustness",
        "Do two sweeps of the same cells and triples that differ "
        "only in arithmetic (device, matmul precision, engine, chunking) reach the same verdicts?",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the report (default: robustness_A_vs_B.md beside sweep A); its figure goes beside it, same name, .png",
    )

    def action() -> str:
        args, positional, psnr_cap, ci_method = _parse(parser, argv, 2, "two sweep folders, SWEEP_A SWEEP_B")
        out = args.out if args.out is not None else default_out(*positional)
        written = write_robustness_report(positional[0], positional[1], out, psnr_cap, ci_method)
        return f"wrote {out} and its figure {written[out.with_suffix('.png').name]}"

    return _run(action)


def resolution_main(argv: Sequence[str]) -> int:
    """`python -m prefit.report resolution SWEEP [--out FILE] [options]`."""
    parser = _parser(
        "python -m prefit.report resolution",
        "Verdicts of one sweep's cells at several image sizes "
        "(its jobs differ only in the cell and dataset.resolution), side by side.",
        "Example: python -m prefit.report resolution outputs/sweeps/resolution",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"the report (default: {RESOLUTION_NAME} beside the "
        "sweep); its figures go into the folder of the same name without the suffix",
    )

    def action() -> str:
        args, positional, psnr_cap, ci_method = _parse(parser, argv, 1, "one SWEEP folder")
        out = args.out if args.out is not None else Path(positional[0]).resolve().parent / RESOLUTION_NAME
        written = write_resolution_report(positional[0], out, psnr_cap, ci_method)
        return f"wrote {out} and {len(written) - 1} figure(s) in {out.with_suffix('')}"

    return _run(action)
