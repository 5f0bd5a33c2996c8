"""`python -m prefit.analyze` end to end (prefit.analysis.pipeline, .summary, .cli): files, summary, options, errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic_sweep import SCHEMES, copy_jobs, write_cell, write_synthetic_sweep

from prefit.analysis import Options, analyze, load_analysis, read_analysis
from prefit.analysis.cli import analyze_main as main
from prefit.analysis.pipeline import is_current
from prefit.io import atomic_write
from prefit.schema import AUC_FILE, PSNR_FILE, STATS_FILE, SUMMARY_FILE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[1]
CELLS = [(3, 32), (2, 32)]
MEASURE_FIGURES = {
    "paired_differences.png",
    "paired_differences_capped.png",
    "paired_differences_epochs_to_30db.png",
    "paired_differences_epochs_to_40db.png",
}


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1024, path


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """A sweep with a diverged and a saturated fit in its first cell, analysed with the defaults."""
    sweep = write_synthetic_sweep(
        tmp_path_factory.mktemp("an") / "sweep", cells=CELLS, n_triples=6, epochs=30, nonfinite=True
    )
    return sweep, analyze(sweep)


def test_all_outputs_written(analysed: tuple[Path, dict[str, Path]]) -> None:
    sweep, outputs = analysed
    out = sweep / "analysis"
    expected = {"curves.parquet", "auc.parquet", "auc.csv", "stats.parquet", "jobs.parquet", "summary.md"}
    expected |= {"figures/auc_boxplot.png", "figures/auc_capped_boxplot.png"}
    expected |= {f"figures/{f}" for f in MEASURE_FIGURES}
    expected |= {f"figures/{kind}_{h}hls_{f}hfs.png" for h, f in CELLS for kind in ("psnr", "recon")}
    assert set(outputs) == expected and all(path == out / name for name, path in outputs.items())
    for name, path in outputs.items():
        if name.endswith(".png"):
            check_png(path)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    auc = pd.read_parquet(out / AUC_FILE)
    assert len(auc) == 2 * 3 * 6 and len(pd.read_csv(out / "auc.csv")) == len(auc)
    assert {"auc", "auc_capped", "epochs_to_30db", "epochs_to_59db", "over_100db", "max_psnr"} <= set(auc.columns)
    stats = pd.read_parquet(out / STATS_FILE)
    assert (
        set(stats["measure"]) == {"auc_capped", "epochs_to_30db", "epochs_to_40db", "auc"} and len(stats) == 2 * 2 * 4
    )
    assert set(stats["verdict"]) <= {"beats", "worse", "unclear", "no data"}
    jobs = pd.read_parquet(out / "jobs.parquet")
    places = ["sweep", "folder", "hls", "hfs", "protocol", "device", "started", "wall_s", "used"]
    assert jobs[places].to_dict("records") == [
        {"sweep": "..", "folder": str(i), "hls": h, "hfs": f, "protocol": "independent"}
        | {"device": "cpu", "started": "2025-01-01T00:00:00", "wall_s": 1.5, "used": True}
        for i, (h, f) in enumerate(CELLS)
    ]


def test_nonfinite_psnr_kept_counted_and_flagged(analysed: tuple[Path, dict[str, Path]]) -> None:
    _, outputs = analysed
    auc = pd.read_parquet(outputs["auc.parquet"]).set_index(["hls", "scheme", "triple"])
    # other_class triple 0 of 3x32 (the first cell written) is NaN from epoch 15; random triple 5 ends at +inf.
    assert auc.loc[(3, "other_class", 0), "diverged"] and np.isnan(auc.loc[(3, "other_class", 0), "auc"])
    assert auc.loc[(3, "random", 5), "saturated"] and auc.loc[(3, "random", 5), "auc"] == np.inf
    assert np.isfinite(auc.loc[(3, "random", 5), "auc_capped"])
    summary = outputs["summary.md"].read_text()
    assert "diverged (NaN or -inf PSNR): 1" in summary and "saturated (+inf PSNR, loss exactly 0): 1" in summary
    stats = pd.read_parquet(outputs["stats.parquet"])
    stats = stats[stats["measure"] == "auc"].set_index(["hls", "scheme"])
    assert stats.loc[(3, "other_class"), "flag_raw_auc"] and not stats.loc[(2, "other_class"), "flag_raw_auc"]
    raw_rows = [line for line in summary.splitlines() if line.startswith("| 3x32 † |")]
    assert len(raw_rows) == 1  # the raw AUC table marks the flagged cell
    assert "| 2x32 † |" not in summary


def test_summary_leads_with_capped_auc_and_time(analysed: tuple[Path, dict[str, Path]]) -> None:
    _, outputs = analysed
    summary = outputs["summary.md"].read_text()
    assert "- PSNR cap: 59 dB" in summary and "percentile bootstrap, 10,000 resamples" in summary
    headings = [line for line in summary.splitlines() if line.startswith("#")]
    assert headings[1] == "## Verdicts: each scheme against `random`"
    assert (
        headings.index("### capped AUC")
        < headings.index("### epochs to 30 dB")
        < headings.index("### raw AUC (for comparison with the original)")
    )
    header = next(line for line in summary.splitlines() if line.startswith("| cell | scheme | capped AUC |"))
    assert header == "| cell | scheme | capped AUC | epochs to 30 dB | epochs to 40 dB | raw AUC |"
    assert summary.index("## Capped AUC and time to PSNR") < summary.index("## Raw AUC (the original study's measure)")
    assert "not corrected for multiple comparisons" in summary


def test_summary_numbers_match_the_tables(tmp_path: Path) -> None:
    trajectories = {  # 3 epochs of a constant c have AUC 2c
        ("random", 0): np.full(3, 10.0),
        ("random", 1): np.full(3, 20.0),
        ("same_class", 0): np.full(3, 13.0),
        ("same_class", 1): np.full(3, 18.0),  # +6, -4 -> +1
        ("other_class", 0): np.array([30.0, np.nan, 30.0]),
        ("other_class", 1): np.full(3, 25.0),  # out, +10
    }
    write_cell(tmp_path / "s" / "0", 2, 32, trajectories, recon=False)
    summary = analyze(tmp_path / "s", tmp_path / "out")["summary.md"].read_text()
    lines = summary.splitlines()
    start = lines.index("## Raw AUC (the original study's measure) per cell")
    header = next(line for line in lines[start:] if line.startswith("| cell |"))
    row = next(line for line in lines[start:] if line.startswith("| 2x32 |"))
    values = dict(
        zip(
            [c.strip() for c in header.strip("|").split("|")],
            [c.strip() for c in row.strip("|").split("|")],
            strict=True,
        )
    )
    assert values["Δ same_class − random (pairs)"] == "+1 (2)" and values["Δ other_class − random (pairs)"] == "+10 (1)"
    assert values["mean raw AUC random"] == "30" and values["best"] == "other_class"
    assert values["diverged (random/same_class/other_class)"] == "0/0/1"


def test_rerun_without_cap_replaces_the_capped_files(tmp_path: Path) -> None:
    sweep = write_synthetic_sweep(tmp_path / "s", cells=[(2, 32)], n_triples=2, epochs=8, recon=False)
    first = analyze(sweep)
    (sweep / "analysis" / "figures" / "notes.png").write_bytes(b"mine")
    again = analyze(sweep, options=Options(psnr_cap=None))
    assert "figures/auc_capped_boxplot.png" in first and "figures/auc_capped_boxplot.png" not in again
    figures = {p.name for p in (sweep / "analysis" / "figures").iterdir()}
    assert figures == {Path(n).name for n in again if n.startswith("figures/")} | {"notes.png"}
    auc = pd.read_parquet(again["auc.parquet"])
    assert "auc_capped" not in auc.columns
    pd.testing.assert_frame_equal(auc, pd.read_parquet(sweep / "analysis" / AUC_FILE))
    assert "PSNR cap: off" in again["summary.md"].read_text()


def test_two_protocols_get_separate_figures(tmp_path: Path) -> None:
    traj = {(s, t): np.array([10.0, 20.0, 30.0]) for s in SCHEMES for t in range(2)}
    write_cell(tmp_path / "s" / "a", 2, 32, traj, protocol="chained", recon=False)
    write_cell(tmp_path / "s" / "b", 2, 32, traj, protocol="independent", recon=False)
    outputs = analyze(tmp_path / "s")
    assert {"figures/psnr_2hls_32hfs_independent.png", "figures/psnr_2hls_32hfs_chained.png"} <= set(outputs)
    assert pd.read_parquet(outputs["auc.parquet"])["protocol"].drop_duplicates().tolist() == ["independent", "chained"]


def test_corrupt_recon_is_skipped_with_a_warning(tmp_path: Path) -> None:
    sweep = write_synthetic_sweep(tmp_path / "s", cells=[(2, 32), (3, 32)], n_triples=2, epochs=12)
    (sweep / "0" / "recon.npz").write_bytes(b"not an npz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outputs = analyze(sweep)
    assert any("recon.npz" in str(w.message) for w in caught)
    assert "figures/recon_2hls_32hfs.png" not in outputs and "figures/recon_3hls_32hfs.png" in outputs


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    def fail(tmp: Path) -> None:
        tmp.write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "x.txt", fail)
    assert list(tmp_path.iterdir()) == []


def test_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = write_synthetic_sweep(tmp_path / "s", cells=[(2, 32)], n_triples=6, epochs=8, recon=False)
    assert main(["--ci-method", "bca", str(sweep), "--out", str(tmp_path / "a"), "--psnr-cap", "59"]) == 0
    stats = pd.read_parquet(tmp_path / "a" / STATS_FILE)
    assert (stats["ci_method"] == "bca").all() and "bias-corrected" in (tmp_path / "a" / SUMMARY_FILE).read_text()
    assert main([str(sweep), "--psnr-cap", "none", "--out", str(tmp_path / "c")]) == 0
    assert "auc_capped" not in pd.read_parquet(tmp_path / "c" / AUC_FILE).columns
    assert pd.read_parquet(tmp_path / "c" / STATS_FILE)["psnr_cap"].isna().all()
    capsys.readouterr()
    for bad, message in [
        (["--psnr-cap", "abc"], "argument --psnr-cap: must be a number of dB or none, got 'abc'"),
        (["analysis.psnr_cap=59"], "analysis.psnr_cap=59: no such folder"),
        (["--psnr-cap", "inf"], "the PSNR cap must be a finite number"),
        (["--ci-method", "student"], "argument --ci-method: invalid choice: 'student'"),
        (["--no-such-flag"], "unrecognized arguments"),
        ([str(sweep)], f"{sweep}: given twice"),
        ([str(sweep / "0")], f"{sweep / '0'} is inside {sweep}: give each sweep folder once"),
    ]:
        assert main([str(sweep), *bad, "--out", str(tmp_path / "d")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prefit.analyze", *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )


@pytest.mark.slow  # seconds of fitting or a subprocess: `make test` runs it, `make test-fast` not
def test_cli_success_and_damaged_input(tmp_path: Path) -> None:
    sweep = write_synthetic_sweep(tmp_path / "s", cells=[(2, 32)], n_triples=2, epochs=8, recon=False)
    result = run_cli(str(sweep), "--out", str(tmp_path / "elsewhere"), "--psnr-cap", "50")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "elsewhere" / "figures" / "auc_capped_boxplot.png").is_file()
    assert not (sweep / "analysis").exists()
    (sweep / "0" / "psnr.parquet").write_bytes((sweep / "0" / "psnr.parquet").read_bytes()[:200])  # damaged
    for args in ([str(sweep)], [str(tmp_path / "nowhere")]):
        result = run_cli(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert args[0] in lines[0] and "Traceback" not in result.stderr


def test_truncated_recon_is_named_in_one_warning_not_a_traceback(tmp_path: Path) -> None:
    sweep = write_synthetic_sweep(tmp_path / "s", cells=[(2, 32)], n_triples=2, epochs=12)
    recon = sweep / "0" / "recon.npz"
    recon.write_bytes(recon.read_bytes()[: recon.stat().st_size // 2])  # a zip cut short: BadZipFile
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outputs = analyze(sweep)
    assert any(str(recon) in str(w.message) for w in caught)
    assert "summary.md" in outputs and "figures/recon_2hls_32hfs.png" not in outputs


def test_analysis_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while writing leaves the previous analysis whole; a success replaces it and keeps files the
    analysis does not write (an executed notebook)."""
    from prefit.analysis import pipeline

    sweep = write_synthetic_sweep(tmp_path / "s", cells=[(2, 32)], n_triples=3, epochs=10, recon=False)
    analyze(sweep)
    out = sweep / "analysis"
    (out / "analysis.ipynb").write_text("{}")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pipeline, "summary_markdown", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        analyze(sweep, options=Options(psnr_cap=None))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in sweep.iterdir() if p.name.startswith(".")] == []  # no half-written folder left

    monkeypatch.undo()
    outputs = analyze(sweep, options=Options(psnr_cap=None))
    assert (out / "analysis.ipynb").read_text() == "{}" and "figures/auc_capped_boxplot.png" not in outputs
    assert not (out / "figures" / "auc_capped_boxplot.png").exists()


def test_two_folders_analyse_as_one_study(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A study's cells run on two machines: `python -m prefit.analyze A B --out DIR` gives the analysis of one folder
    holding every cell; the cell copied into both (2x64) is read once."""
    cells = [(2, 32), (3, 32), (2, 64)]
    whole = write_synthetic_sweep(tmp_path / "whole", cells=cells, n_triples=4, epochs=10, recon=False)
    a = copy_jobs(whole, tmp_path / "a", ["0", "2"])
    b = copy_jobs(whole, tmp_path / "b", ["1", "2"], ["1", "again"])
    one = analyze(whole, tmp_path / "one")
    capsys.readouterr()
    assert main([str(a), str(b), "--out", str(tmp_path / "merged")]) == 0
    merged = tmp_path / "merged"
    for name in ("auc.parquet", "stats.parquet", "curves.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(merged / name), pd.read_parquet(one[name]))
    jobs = pd.read_parquet(merged / "jobs.parquet")[["sweep", "folder", "hls", "hfs", "used"]]
    assert jobs.values.tolist() == [
        ["../a", "0", 2, 32, True],
        ["../a", "2", 2, 64, True],
        ["../b", "1", 3, 32, True],
        ["../b", "again", 2, 64, False],
    ]
    err = capsys.readouterr().err.strip().splitlines()
    info = f"info: {b / 'again'}: cell 2x64 (independent) is also in {a / '2'}, the same study and results: read once"
    assert [line for line in err if line.startswith(("info", "error"))] == [info]
    summary = (merged / SUMMARY_FILE).read_text()
    assert summary.startswith(f"# Analysis of `{a}`, `{b}`\n") and "- copies left out: 1 job(s)" in summary


def test_a_conflicting_copy_ends_the_command_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The same cell rerun on another machine (other numbers) in a second folder: exit 2, one line naming both."""
    whole = write_synthetic_sweep(tmp_path / "whole", cells=[(2, 32), (3, 32)], n_triples=2, epochs=6, recon=False)
    b = copy_jobs(whole, tmp_path / "b", ["0"])
    frame = pd.read_parquet(b / "0" / PSNR_FILE)
    frame.assign(psnr=frame["psnr"] + 0.25).to_parquet(b / "0" / PSNR_FILE, index=False)
    capsys.readouterr()
    assert main([str(whole), str(b), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "other results" in err[0], err
    assert str(whole / "0") in err[0] and str(b / "0") in err[0] and not (tmp_path / "out").exists()
    assert main([str(whole), str(b)]) == 2 and not (whole / "analysis").exists()


def test_the_analysis_of_several_folders_is_kept_current_for_all_of_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """load_analysis of two folders analyses them into the first one's analysis/ and reads it back while it is
    current: a job of either folder newer than it, or a job added to either, makes it analyse them again; another
    set of folders (the first alone) is analysed for itself."""
    from prefit.analysis import load

    whole = write_synthetic_sweep(tmp_path / "whole", cells=[(2, 32), (3, 32)], n_triples=3, epochs=6, recon=False)
    a, b = copy_jobs(whole, tmp_path / "a", ["0"]), copy_jobs(whole, tmp_path / "b", ["1"])
    first = load_analysis([a, b])
    assert (a / "analysis" / STATS_FILE).is_file() and not (b / "analysis").exists()
    reads: list[Path] = []
    real = load.read_fit_rows
    monkeypatch.setattr(load, "read_fit_rows", lambda path: reads.append(path) or real(path))
    again = load_analysis([a, b])
    assert reads == [] and again.sweep.roots == (a, b)
    pd.testing.assert_frame_equal(again.stats, first.stats)
    notebook = read_analysis(a / "analysis")  # no folders given: those its jobs.parquet records
    assert notebook.sweep.roots == (a, b) and notebook.sweep.jobs["folder"].tolist() == [a / "0", b / "1"]
    os.utime(b / "1" / PSNR_FILE)  # the second folder's job ran again
    load_analysis([a, b])
    assert sorted(reads) == [a / "0" / PSNR_FILE, b / "1" / PSNR_FILE]
    reads.clear()
    copy_jobs(whole, b, ["0"], ["late"])  # a copy arrives with its old times (rsync -a): the job list tells
    assert len(load_analysis([a, b]).sweep.copies) == 1 and len(reads) == 3
    reads.clear()
    assert load_analysis([a, b]).sweep.name == f"{a}, {b}" and reads == []
    alone = load_analysis(a)
    assert set(alone.auc["hls"]) == {2} and alone.sweep.roots == (a,) and reads == [a / "0" / PSNR_FILE]


def test_an_older_jobs_table_reads_as_one_folder_and_is_analysed_again(tmp_path: Path) -> None:
    """jobs.parquet of an earlier version (no `sweep`, `used`): read back as the folder above it, never current."""
    sweep = write_synthetic_sweep(tmp_path / "s", cells=[(2, 32)], n_triples=2, epochs=6, recon=False)
    analyze(sweep)
    path = sweep / "analysis" / "jobs.parquet"
    pd.read_parquet(path)[["folder", "hls", "hfs", "protocol"]].to_parquet(path, index=False)
    back = read_analysis(sweep / "analysis")
    assert back.sweep.roots == (sweep,) and back.sweep.jobs["folder"].tolist() == [sweep / "0"]
    assert not is_current([sweep], sweep / "analysis", Options())
    assert "sweep" in pd.read_parquet(load_analysis(sweep).sweep.root / "analysis" / "jobs.parquet").columns


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_analyze_passes_several_folders() -> None:
    venv = Path(sys.prefix)
    command = ["make", "-n", "-C", str(REPO), "analyze", f"VENV={venv}", "-o", f"{venv}/.installed"]
    for sweep, analysed, where in [("a", "a", "a"), ("a b", "a b", "a")]:
        result = subprocess.run([*command, f"SWEEP={sweep}"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert [line.split("-m prefit.analyze")[1].split() for line in lines if "prefit.analyze" in line] == [
            analysed.split()
        ]
        assert f"analysis: {where}/analysis/" in result.stdout
