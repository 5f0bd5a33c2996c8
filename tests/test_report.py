"""The protocol report (prefit.analysis.protocol) on two synthetic sweeps, one per protocol: files, coverage,
verdicts, the written conclusion, the robustness section, and `python -m prefit.report`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from synthetic_sweep import copy_jobs, ramp_trajectories, write_cell

from prefit.analysis import Options
from prefit.analysis.cli import report_main as main
from prefit.analysis.load import AnalysisError
from prefit.analysis.protocol import conclusion_markdown, coverage, duration, presentation, write_report
from prefit.analysis.reduce import MEASURES
from prefit.schema import PROTOCOL_ORDER

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[1]
COMMON = [(2, 32), (3, 32)]
N_TRIPLES, EPOCHS = 8, 20
WALL_S = {(2, 32): 30.0, (3, 32): 45.0, (2, 64): 600.0}


def write_protocol_sweep(root: Path, protocol: str, cells: list[tuple[int, int]]) -> Path:
    """other_class is 5 dB above random at every epoch under chained (as the original's figures suggest), and under
    independent differs from it by alternating small amounts (no clear difference)."""
    for job, (hls, hfs) in enumerate(cells):
        traj = ramp_trajectories(N_TRIPLES, EPOCHS, seed=hls * 1000 + hfs)
        for t in range(N_TRIPLES):
            shift = 5.0 if protocol == "chained" else (-1.0) ** t * 0.1 * (t + 1)
            traj[("other_class", t)] = traj[("random", t)] + shift
        write_cell(root / str(job), hls, hfs, traj, protocol=protocol, recon=False, wall_s=WALL_S[(hls, hfs)])
    return root


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    return {
        "chained": write_protocol_sweep(root / "chained", "chained", COMMON),
        "independent": write_protocol_sweep(root / "independent", "independent", [*COMMON, (2, 64)]),
    }


@pytest.fixture(scope="module")
def report(sweeps: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The report with a robustness rerun: the independent sweep itself (the same arithmetic)."""
    out = tmp_path_factory.mktemp("docs") / "findings.md"
    return write_report(sweeps["independent"], sweeps["chained"], out, robust=sweeps["independent"])


def test_report_files_and_links(report: dict[str, Path]) -> None:
    out = report["findings.md"]
    figures = {f"findings/psnr_{h}hls_{f}hfs.png" for h, f in COMMON}
    figures |= {
        f"findings/{n}.png"
        for n in (
            "auc_boxplot",
            "auc_capped_boxplot",
            "paired_differences",
            "paired_differences_capped",
            "paired_differences_epochs_to_30db",
            "paired_differences_epochs_to_40db",
            "robustness_independent",
        )
    }
    assert set(report) == {"findings.md", "findings/robustness_independent.md"} | figures
    for name in figures:
        data = report[name].read_bytes()
        assert report[name] == out.parent / name and data[:8] == PNG_SIGNATURE and len(data) > 1024, name
    text = out.read_text()
    images = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text))
    curves = {f"findings/psnr_{h}hls_{f}hfs.png" for h, f in COMMON}
    assert images == figures - curves  # the curves are linked, not inlined
    assert all(f"]({c})" in text for c in curves) and "](findings/robustness_independent.md)" in text
    assert not [p for p in out.parent.rglob("*.tmp")]


def test_report_states_what_it_covers(report: dict[str, Path]) -> None:
    text = report["findings.md"].read_text()
    assert (
        "**cells covered**: 2 of the 42 cells of the full grid (hls 2–8 x hfs 32–1024), those both sweeps ran: "
        "2x32, 3x32" in text
    )
    assert "- not covered (40 cells, not run under both protocols yet" in text and "8x1024" in text
    assert "only in the independent sweep (left out): 2x64" in text
    assert "the two sweeps hold the same triples" in text and "`target_index` matches" in text
    before_runs = text[: text.index("## Runs")].replace("only in the independent sweep (left out): 2x64", "")
    assert "2x64" not in before_runs.split("- not covered")[0]  # no statistics of the cell not in both
    info = coverage([(2, 32), (1, 8)])
    assert info["in_grid"] == [(2, 32)] and info["outside"] == [(1, 8)] and len(info["missing"]) == 41


def test_verdict_table_over_every_cell_and_measure(report: dict[str, Path]) -> None:
    text = report["findings.md"].read_text()
    header = next(line for line in text.splitlines() if line.startswith("| cell | scheme | capped AUC (chained)"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns == ["cell", "scheme"] + [f"{m.label} ({p})" for m in MEASURES for p in ("chained", "independent")]
    rows = [line for line in text.splitlines() if re.match(r"\| [23]x32 \| (same|other)_class \| (\*\*|unclear)", line)]
    assert len(rows) == 4
    other = next(r for r in rows if r.startswith("| 2x32 | other_class"))
    cells = [c.strip() for c in other.strip("|").split("|")]
    assert cells[2].startswith("**beats**") and cells[3].startswith("unclear")  # capped AUC: chained, independent
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings[:3] == [
        "## Verdicts: each scheme against random, in every covered cell",
        "## What changes in the conclusion",
        "## Paired differences from random",
    ]
    assert {"## AUC of every fit", "## PSNR curves per cell", "## Robustness", "## Runs"} <= set(headings)


def test_conclusion_and_runs(report: dict[str, Path], sweeps: dict[str, Path]) -> None:
    text = report["findings.md"].read_text()
    assert "In the smallest common cell, 2x32, by the capped AUC: under chained, Δ = +" in text
    assert "other_class beats random in 2 under chained and in 0 under independent" in text
    assert "holds only under the chained protocol" in text
    assert "- raw AUC: other_class beats random in 2 cell(s) under chained and 0 cell(s) under independent" in text
    runs = text[text.index("## Runs") :]
    assert f"| chained | `{sweeps['chained']}` | 2 | {N_TRIPLES} | {EPOCHS} |" in runs
    assert "| 2 (2) | 1 min 15 s | cpu |" in runs and "| 3 (3) | 11 min 15 s | cpu |" in runs
    assert "| 2x32 | 8 | 8 | 20 | 20 | 30.0 s | 30.0 s |" in runs
    robust = text[text.index("## Robustness") : text.index("## Runs")]
    assert "The verdicts agree in 24 of 24 comparisons" in robust and "No verdict changes between the sweeps." in robust


def test_presentation_is_a_choice_over_the_one_order() -> None:
    assert presentation() == ["chained", "independent"] and presentation(False) == list(PROTOCOL_ORDER)


def long_frame(rows: dict[tuple[str, int, int, str], tuple[float, float, float, float]], n: int = 20) -> pd.DataFrame:
    """A long stats table from {(protocol, hls, hfs, scheme): (mean, ci_low, ci_high, p)} for the capped AUC and
    (the same numbers) the raw AUC."""
    from prefit.analysis.stats import verdict_of

    records = [
        {
            "hls": h,
            "hfs": f,
            "protocol": p,
            "scheme": s,
            "measure": m,
            "n": n,
            "delta": mean,
            "ci_low": lo,
            "ci_high": hi,
            "p": pv,
            "verdict": verdict_of(n, lo, hi, pv),
        }
        for (p, h, f, s), (mean, lo, hi, pv) in rows.items()
        for m in ("auc_capped", "auc")
    ]
    return pd.DataFrame.from_records(records)


BETTER, UNCLEAR, WORSE = (500.0, 200.0, 800.0, 0.001), (20.0, -50.0, 90.0, 0.6), (-300.0, -500.0, -100.0, 0.002)
LEAD = [m for m in MEASURES if m.name in ("auc_capped", "auc")]


def conclusion_text(long: pd.DataFrame, cells: list[tuple[int, int]]) -> str:
    return conclusion_markdown(long, cells, LEAD, presentation())


@pytest.mark.parametrize(
    ("chained", "independent", "expected"),
    [
        (BETTER, UNCLEAR, "holds only under the chained protocol"),
        (BETTER, WORSE, "is worse than a random initialisation in the smallest cell (2x32)"),
        (BETTER, BETTER, "the direction of the conclusion survives the corrected protocol"),
        (UNCLEAR, UNCLEAR, "does not reproduce the original's conclusion even under the chained protocol"),
        (UNCLEAR, BETTER, "yet under the independent protocol other_class beats random there"),
    ],
)
def test_conclusion_follows_the_numbers(chained: tuple, independent: tuple, expected: str) -> None:
    cells = [(2, 32), (2, 64)]
    long = long_frame(
        {
            ("chained", 2, 32, "other_class"): chained,
            ("chained", 2, 64, "other_class"): UNCLEAR,
            ("chained", 2, 32, "same_class"): BETTER,
            ("independent", 2, 32, "other_class"): independent,
            ("independent", 2, 64, "other_class"): UNCLEAR,
            ("independent", 2, 32, "same_class"): UNCLEAR,
        }
    )
    text = conclusion_text(long, cells)
    assert expected in text
    assert "pre-fitting on an image of a different class helps small models most" in text
    assert "same_class 1 / 0, of 2" in text
    if chained == BETTER and independent == BETTER:
        assert "under independent it is 2x32: 100% of the gain under chained" in text


def test_conclusion_warns_when_too_few_triples_for_the_test() -> None:
    rows = {(p, 2, 32, "other_class"): UNCLEAR for p in PROTOCOL_ORDER}
    assert "smallest exact two-sided Wilcoxon p is 2/2^5 = 0.0625" in conclusion_text(long_frame(rows, n=5), [(2, 32)])
    assert "smallest exact" not in conclusion_text(long_frame(rows, n=6), [(2, 32)])
    rows = {(p, 2, 32, "same_class"): BETTER for p in PROTOCOL_ORDER}
    assert "so the original's claim cannot be checked here" in conclusion_text(long_frame(rows), [(2, 32)])


def test_mismatched_triples_are_reported(sweeps: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "independent"
    shutil.copytree(sweeps["independent"], other)
    path = other / "0" / "psnr.parquet"  # cell 2x32: triple 1 fits another A
    frame = pd.read_parquet(path)
    frame.loc[(frame["triple"] == 1) & (frame["phase"] == "fit"), "target_index"] += 7
    frame.to_parquet(path, index=False)
    text = write_report(other, sweeps["chained"], tmp_path / "f.md", Options(psnr_cap=None))["f.md"].read_text()
    assert (
        "**The triples differ** in 1 of 2 common cell(s): 2x32 (chained: 8 triples, independent: 8, 8 in both, "
        "1 with a different A)" in text
    )
    assert "PSNR cap: off" in text and "capped AUC" not in text.split("## Runs")[0].split("## Verdicts")[1]


def test_errors(sweeps: dict[str, Path], tmp_path: Path) -> None:
    chained = write_protocol_sweep(tmp_path / "c", "chained", [(2, 32)])
    independent = write_protocol_sweep(tmp_path / "i", "independent", [(2, 64)])
    with pytest.raises(AnalysisError, match="no cell is in both sweeps"):
        write_report(independent, chained, tmp_path / "findings.md")
    other = write_protocol_sweep(tmp_path / "o", "independent", [(2, 32)])
    frame = pd.read_parquet(other / "0" / "psnr.parquet")
    frame.assign(protocol="other").to_parquet(other / "0" / "psnr.parquet", index=False)
    with pytest.raises(AnalysisError, match="holds neither protocol"):
        write_report(sweeps["independent"], sweeps["chained"], tmp_path / "x.md", robust=other)
    assert duration(239.7) == "4 min 00 s" and duration(3599.6) == "1 h 00 min" and duration(75.2) == "1 min 15 s"


@pytest.mark.slow  # seconds of fitting or a subprocess: `make test` runs it, `make test-fast` not
def test_cli(sweeps: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "notes" / "protocols.md"
    argv = ["--independent", str(sweeps["independent"]), "--chained", str(sweeps["chained"]), "--out", str(out)]
    assert main([*argv, "--psnr-cap", "none"]) == 0
    assert out.is_file() and (tmp_path / "notes" / "protocols" / "psnr_2hls_32hfs.png").is_file()
    assert "PSNR cap: off" in out.read_text()
    assert not (tmp_path / "notes" / "protocols" / "paired_differences_capped.png").exists()
    capsys.readouterr()
    bad = ["--independent", str(sweeps["chained"]), "--chained", str(sweeps["chained"]), "--out", str(out)]
    for args, message in [
        (bad, "no fits with protocol 'independent'"),
        ([*argv, "--psnr-cap", "oops"], "argument --psnr-cap: must be a number of dB or none"),
        (argv[:2], "the following arguments are required: --chained"),
        ([*argv, "extra"], "unrecognized arguments: extra"),
    ]:
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    result = subprocess.run(
        [sys.executable, "-m", "prefit.report", *argv], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0 and "wrote" in result.stdout, result.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_report_target() -> None:
    result = subprocess.run(
        [
            "make",
            "-n",
            "report",
            "SWEEP_INDEPENDENT=a/i",
            "SWEEP_CHAINED=b/c",
            "REPORT_ARGS=--robust r --ci-method bca",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "-m prefit.report --independent a/i --chained b/c --out docs/findings.md --robust r --ci-method bca"
        in result.stdout
    )
    several = ["SWEEP_INDEPENDENT=a/i laptop/i", "SWEEP_CHAINED=b/c gpu/c"]
    result = subprocess.run(["make", "-n", "report", *several], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "-m prefit.report --independent a/i laptop/i --chained b/c gpu/c --out docs/findings.md" in result.stdout


def test_default_out_is_beside_the_sweeps_not_in_docs(
    sweeps: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # a docs/ folder here would be written into by the old default
    (tmp_path / "docs").mkdir()
    assert main(["--independent", str(sweeps["independent"]), "--chained", str(sweeps["chained"])]) == 0
    beside = Path(sweeps["independent"]).resolve().parent / "findings.md"
    assert beside.is_file() and (beside.parent / "findings").is_dir()
    assert not any((tmp_path / "docs").iterdir())


def test_the_report_reads_the_analysis_not_the_trajectories(
    sweeps: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With both analyses current the report reads stats.parquet, auc.parquet and curves.parquet: no psnr.parquet
    is opened. A job's file newer than its sweep's analysis, or other options, make it analyse that sweep again."""
    from prefit.analysis import load, pipeline

    copies = {p: shutil.copytree(path, tmp_path / p) for p, path in sweeps.items()}
    for path in copies.values():
        pipeline.analyze(path)
    stats = pd.read_parquet(copies["chained"] / "analysis" / "stats.parquet")
    stats.loc[stats["measure"] == "auc_capped", "verdict"] = "worse"  # what the report shows comes from this file
    stats.to_parquet(copies["chained"] / "analysis" / "stats.parquet", index=False)

    def refuse(*args, **kwargs):
        raise AssertionError("read a psnr.parquet")

    monkeypatch.setattr(load, "read_fit_rows", refuse)
    text = write_report(copies["independent"], copies["chained"], tmp_path / "f.md")["f.md"].read_text()
    assert "| 2x32 | other_class | **worse** (+" in text
    psnr = copies["chained"] / "0" / "psnr.parquet"
    os.utime(psnr)  # now: as if the job ran again after the analysis
    with pytest.raises(AssertionError, match="read a psnr.parquet"):
        write_report(copies["independent"], copies["chained"], tmp_path / "f.md")
    monkeypatch.undo()
    assert (
        "| 2x32 | other_class | **beats** (+"
        in write_report(copies["independent"], copies["chained"], tmp_path / "f.md")["f.md"].read_text()
    )
    monkeypatch.setattr(load, "read_fit_rows", refuse)
    write_report(copies["independent"], copies["chained"], tmp_path / "f.md")  # both current again
    with pytest.raises(AssertionError, match="read a psnr.parquet"):
        write_report(copies["independent"], copies["chained"], tmp_path / "f.md", Options(ci_method="bca"))


def test_an_analysis_in_the_old_layout_is_one_line(sweeps: dict[str, Path], tmp_path: Path, capsys) -> None:
    from prefit.analysis import read_analysis

    copies = {
        p: shutil.copytree(path, tmp_path / p, ignore=shutil.ignore_patterns("analysis")) for p, path in sweeps.items()
    }
    out = copies["chained"] / "analysis"
    out.mkdir()
    wide = pd.DataFrame(
        {"hls": [2], "hfs": [32], "protocol": ["chained"], "scheme": ["same_class"], "mean_diff_auc": [1.0]}
    )
    wide.to_parquet(out / "stats.parquet", index=False)
    with pytest.raises(AnalysisError) as info:
        read_analysis(out)
    message = str(info.value)
    assert (
        "\n" not in message
        and "older layout" in message
        and f"run `python -m prefit.analyze {copies['chained']}` again" in message
    )
    assert (
        main(
            [
                "--independent",
                str(copies["independent"]),
                "--chained",
                str(copies["chained"]),
                "--out",
                str(tmp_path / "f.md"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "python -m prefit.analyze" in err[0]


def test_several_folders_per_protocol(sweeps: dict[str, Path], tmp_path: Path) -> None:
    """The chained cells run on two machines, one folder each: `--chained GPU LAPTOP` reports what the chained sweep
    of both cells reports, and the Runs tables name each folder, and each job's folder, machine and start."""
    gpu = copy_jobs(sweeps["chained"], tmp_path / "gpu", ["0"])
    laptop = copy_jobs(sweeps["chained"], tmp_path / "laptop", ["1"])
    run = json.loads((laptop / "1" / "run.json").read_text())
    run |= {"device": "cuda:0", "device_name": "NVIDIA H200", "started": "2025-02-03T04:05:06", "step": "fused"}
    (laptop / "1" / "run.json").write_text(json.dumps(run))
    out = tmp_path / "merged.md"
    argv = ["--independent", str(sweeps["independent"]), "--chained", str(gpu), str(laptop), "--out", str(out)]
    assert main(argv) == 0
    text = out.read_text()
    one = write_report(sweeps["independent"], sweeps["chained"], tmp_path / "single.md")["single.md"].read_text()

    def body(report: str, name: str) -> str:  # every verdict, number and figure, not where the runs came from
        return report[report.index("- **cells covered**") : report.index("## Runs")].replace(f"]({name}/", "](")

    assert body(text, "merged") == body(one, "single")
    assert f"chained sweep: `{gpu}`, `{laptop}`" in text
    assert f"| chained | `{gpu}`, `{laptop}` | 2 | {N_TRIPLES} | {EPOCHS} |" in text
    assert "| 2 (2) | 1 min 15 s | cpu, cuda:0 (NVIDIA H200) | fused, — |" in text
    jobs = text[text.index("| cell | protocol | sweep | job | machine | step | started | wall time |") :]
    assert f"| 2x32 | chained | `{gpu}` | `0` | cpu | — | 2025-01-01 00:00 | 30.0 s |" in jobs
    assert f"| 3x32 | chained | `{laptop}` | `1` | cuda:0 (NVIDIA H200) | fused | 2025-02-03 04:05 | 45.0 s |" in jobs
    independent = f"`{sweeps['independent']}`"
    assert f"| 3x32 | independent | {independent} | `1` | cpu | — | 2025-01-01 00:00 | 45.0 s |" in jobs
    assert (gpu / "analysis" / "stats.parquet").is_file() and not (laptop / "analysis").exists()
