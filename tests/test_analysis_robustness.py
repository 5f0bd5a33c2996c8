"""The robustness report (prefit.analysis.robustness): two real tiny CPU sweeps that differ only in the engine
agree; a synthetic pair built to disagree shows it; mismatched triples and disjoint sweeps are named."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_smoke_sweep, write_cifar_dir
from synthetic_sweep import ramp_trajectories, study_of, write_cell

from prefit.analysis.cli import report_main
from prefit.analysis.load import AnalysisError
from prefit.analysis.pipeline import compute_analysis as analyse
from prefit.analysis.robustness import compare, default_out, write_robustness_report

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def real_sweeps(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One cell (1x8, 8 triples, the smoke preset's 30 epochs) fitted by the batched engine and by the
    sequential reference: the same study in other arithmetic."""
    root = tmp_path_factory.mktemp("robust")
    data = write_cifar_dir(root / "cifar", per_batch=20)  # 100 images: room for 8 triples
    run_smoke_sweep(data, root / "batched", "dataset.n_triples=8")
    run_smoke_sweep(data, root / "sequential", "dataset.n_triples=8", "train.engine=sequential")
    return root / "batched", root / "sequential"


@pytest.mark.slow  # two real sweeps, as subprocesses
def test_engines_reach_the_same_verdicts(real_sweeps: tuple[Path, Path], tmp_path: Path) -> None:
    batched, sequential = real_sweeps
    comparison = compare(analyse(batched), analyse(sequential))
    table = comparison.table
    assert comparison.cells == [(1, 8, "independent")] and not comparison.mismatched
    assert len(table) == 2 * 4 and table["agree"].all()  # 2 schemes x 4 measures
    assert set(table["verdict_a"]) - {"unclear"}, "a test without a clear verdict would agree trivially"
    assert comparison.config["train.engine"] == ("batched", "sequential") and not comparison.study_keys
    gaps = table[table["measure"] == "auc"]["gap"]
    assert (gaps < 1e-2).all() and (gaps > 0).any()  # other arithmetic, the same fits to within float noise

    out = tmp_path / "robustness.md"
    result = subprocess.run(
        [sys.executable, "-m", "prefit.report", "robustness", str(batched), str(sequential), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "The verdicts agree in 8 of 8 comparisons" in text and "No verdict changes between the sweeps." in text
    assert "`train.engine` batched (A) / sequential (B)" in text
    assert "compared: the 1 cell(s) in both sweeps with the same triples: 1x8" in text
    assert "after the same pre-fit images (`prefit_index`, 16 fits)" in text
    assert out.with_suffix(".png").read_bytes()[:8] == PNG_SIGNATURE and "](robustness.png)" in text


def write_pair(root: Path, cells: list[tuple[int, int]]) -> tuple[Path, Path]:
    """Sweep A: other_class 5 dB above random at every epoch (it beats random by every measure). Sweep B: the
    same triples, other_class within ±1 dB of random in alternating directions (unclear)."""
    for name, shift in (("a", lambda t: 5.0), ("b", lambda t: (-1.0) ** t * 0.1 * (t + 1))):
        for job, (hls, hfs) in enumerate(cells):
            traj = ramp_trajectories(8, 30, seed=hls * 1000 + hfs)
            for t in range(8):
                traj[("other_class", t)] = traj[("random", t)] + shift(t)
            write_cell(root / name / str(job), hls, hfs, traj, recon=False)
    return root / "a", root / "b"


def test_a_disagreement_is_shown(tmp_path: Path) -> None:
    a, b = write_pair(tmp_path, [(2, 32), (3, 32)])
    for job in (b / "0", b / "1"):  # B also says it ran another engine, and another learning rate
        run = json.loads((job / "run.json").read_text())
        run["config"]["train"] |= {"engine": "sequential", "lr": 0.001}
        (job / "run.json").write_text(json.dumps(run))
    written = write_robustness_report(a, b, tmp_path / "r.md")
    text = written["r.md"].read_text()
    table = compare(analyse(a), analyse(b)).table
    off = table[~table["agree"]]
    assert set(off["scheme"]) == {"other_class"} and set(off["verdict_a"]) == {"beats"}
    assert set(off["verdict_b"]) == {"unclear"} and {"auc_capped", "auc"} <= set(off["measure"])
    assert "## Where the verdicts disagree" in text.replace("### Where", "## Where")
    section = text[text.index("Where the verdicts disagree") : text.index("## How the verdicts are reached")]
    assert "| 2x32 | other_class | +" in section and "| **beats** |" in section and "| unclear | **no** |" in section
    assert "same_class" not in section  # it agrees everywhere
    assert f"The verdicts agree in {int(table['agree'].sum())} of {len(table)} comparisons" in text
    assert "**The sweeps differ in more than arithmetic**: train.lr" in text
    assert "`train.engine` — (A) / sequential (B)" in text


def test_a_key_added_with_a_null_default_is_no_difference(tmp_path: Path) -> None:
    """A run.json written before `dataset.resolution` existed and one that records it as null: the same study."""
    a, b = write_pair(tmp_path, [(2, 32)])

    def set_resolution(job: Path, value: object) -> None:
        run = json.loads((job / "run.json").read_text())
        run["config"].setdefault("dataset", {}).pop("resolution", None)
        if value != "absent":
            run["config"]["dataset"]["resolution"] = value
        (job / "run.json").write_text(json.dumps(run))

    set_resolution(a / "0", None)
    set_resolution(b / "0", "absent")
    comparison = compare(analyse(a), analyse(b))
    assert "dataset.resolution" not in comparison.config and not comparison.study_keys
    set_resolution(b / "0", 64)
    comparison = compare(analyse(a), analyse(b))
    assert comparison.config["dataset.resolution"] == ("—", "64") and comparison.study_keys == ["dataset.resolution"]


def test_one_folder_spelled_two_ways_is_no_difference(tmp_path: Path) -> None:
    """Jobs run with `dataset.path=../data` and with its absolute path record the same study (the path resolved where
    they ran): the same study, whatever the spellings in their configs; recorded studies that differ are named."""
    a, b = write_pair(tmp_path, [(2, 32)])

    def set_path(job: Path, spelled: str, resolved: str) -> None:
        run = json.loads((job / "run.json").read_text())
        run["config"]["dataset"]["path"] = spelled
        run["study"] = study_of(2, 32, dataset__path=resolved)
        (job / "run.json").write_text(json.dumps(run))

    set_path(a / "0", "../data", "/work/data")
    set_path(b / "0", "/work/data", "/work/data")
    comparison = compare(analyse(a), analyse(b))
    assert "dataset.path" not in comparison.config and not comparison.study_keys
    set_path(b / "0", "../data", "/elsewhere/data")
    comparison = compare(analyse(a), analyse(b))
    assert comparison.config["dataset.path"] == ("/work/data", "/elsewhere/data")
    assert comparison.study_keys == ["dataset.path"]


def test_mismatched_triples_are_left_out_and_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = write_pair(tmp_path, [(2, 32), (3, 32)])
    path = b / "0" / "psnr.parquet"  # 2x32 of B: triple 1 fits another A
    frame = pd.read_parquet(path)
    frame.loc[(frame["triple"] == 1) & (frame["phase"] == "fit"), "target_index"] += 7
    frame.to_parquet(path, index=False)
    comparison = compare(analyse(a), analyse(b))
    assert comparison.cells == [(3, 32, "independent")] and comparison.mismatched == [(2, 32, "independent")]
    text = write_robustness_report(a, b, tmp_path / "r.md")["r.md"].read_text()
    assert "**The triples differ** in 1 of the 2 cell(s) in both sweeps, left out:" in text
    assert "- 2x32: A 8 triples, B 8, 8 in both, 1 fitting another A" in text
    shutil.rmtree(b / "1")  # now the only cell in both has other triples
    assert report_main(["robustness", str(a), str(b), "--out", str(tmp_path / "x.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no cell of both sweeps holds the same triples")


def test_sweeps_without_common_cells_and_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, _ = write_pair(tmp_path / "x", [(2, 32)])
    _, b = write_pair(tmp_path / "y", [(2, 64)])
    with pytest.raises(AnalysisError, match="no cell is in both sweeps"):
        compare(analyse(a), analyse(b))
    for argv, message in [
        (["robustness", str(a), str(b)], "no cell is in both sweeps"),
        (["robustness", str(a)], "the following arguments are required: SWEEP_B"),
        (["robustness", str(a), str(tmp_path / "nowhere")], "no such folder"),
    ]:
        assert report_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_default_output_beside_sweep_a_never_in_docs(tmp_path: Path) -> None:
    assert (
        default_out(tmp_path / "runs" / "fp32", tmp_path / "other" / "tf32")
        == (tmp_path / "runs" / "robustness_fp32_vs_tf32.md").resolve()
    )
    with pytest.raises(AnalysisError, match="would land in docs/"):
        default_out(REPO / "docs" / "sweeps" / "a", tmp_path / "b")


def test_robust_option_of_the_protocol_report_compares_like_the_report(tmp_path: Path) -> None:
    from prefit.analysis.protocol import write_report

    a, b = write_pair(tmp_path, [(2, 32)])
    chained = tmp_path / "chained"
    traj = {(s, t): np.linspace(10, 40, 30) for s in ("random", "same_class", "other_class") for t in range(8)}
    write_cell(chained / "0", 2, 32, traj, protocol="chained", recon=False)
    written = write_report(a, chained, tmp_path / "f.md", robust=b)
    section = written["f.md"].read_text().split("## Robustness")[1]
    assert "#### Where the verdicts disagree" in section and "| **beats** |" in section
    assert "robustness_independent.md" in section and "f/robustness_independent.md" in written
