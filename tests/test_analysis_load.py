"""prefit.analysis.load: reading a sweep folder, and every kind of unusable input as one line naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic_sweep import (
    copy_jobs,
    psnr_frame,
    ramp_trajectories,
    study_of,
    write_cell,
    write_synthetic_sweep,
    write_variant_sweep,
)

from prefit.analysis.load import AnalysisError, find_psnr_files, job_info, load_recon, load_sweep, read_fit_rows, span
from prefit.analysis.pipeline import compute_analysis
from prefit.errors import one_line
from prefit.records import complete
from prefit.schema import MEMBER_KEYS, PSNR_FILE, RECON_FILE, RUN_FILE, write_psnr

NEW = ["class_mean", "multi_same", "meta"]


def test_only_fit_rows_of_the_last_fit_stage_are_read(tmp_path: Path) -> None:
    sweep = write_synthetic_sweep(tmp_path / "s", cells=[(2, 32)], n_triples=2, epochs=5, new_schemes=True)
    loaded = load_sweep(sweep)
    assert loaded.fits["psnr"].max() < 500.0  # the pre-fit rows (500 dB + stage) are gone
    assert len(loaded.fits) == 6 * 2 * 5 and len(loaded.members) == 6 * 2
    assert list(loaded.fits.columns) == [*MEMBER_KEYS, "epoch", "psnr"]
    assert loaded.fits["psnr"].dtype == np.float64
    assert isinstance(loaded.fits["scheme"].dtype, pd.CategoricalDtype) and loaded.fits["scheme"].cat.ordered
    assert list(loaded.fits["scheme"].cat.categories) == ["random", "same_class", "other_class", *NEW]  # study order
    assert loaded.runs[sweep / "0"]["status"] == "complete"
    job = {"sweep": sweep, "folder": sweep / "0", "hls": 2, "hfs": 32, "protocol": "independent"}
    assert loaded.jobs.to_dict("records") == [job] and loaded.roots == (sweep,) and loaded.copies.empty
    assert (loaded.jobs["folder"][0] / RECON_FILE).is_file()
    info = job_info(loaded).iloc[0]
    assert (info["status"], info["wall_s"], info["device"], info["members"]) == ("complete", 1.5, "cpu", 12)


def test_the_compact_format_reads_like_the_old_one(tmp_path: Path) -> None:
    traj = {("random", 0): np.arange(4.0), ("same_class", 0): np.arange(4.0) + 1}
    old = write_cell(tmp_path / "old" / "0", 2, 32, traj, recon=False)
    new = tmp_path / "new" / "0"
    new.mkdir(parents=True)
    write_psnr(pd.read_parquet(old / PSNR_FILE), new / PSNR_FILE)
    a, b = read_fit_rows(old / PSNR_FILE), read_fit_rows(new / PSNR_FILE)
    pd.testing.assert_frame_equal(a, b)


def test_one_protocol_of_an_analysis(tmp_path: Path) -> None:
    traj = {("random", t): np.arange(3.0) for t in range(2)}
    write_cell(tmp_path / "s" / "a", 2, 32, traj, protocol="independent", recon=False)
    write_cell(tmp_path / "s" / "b", 2, 32, traj, protocol="chained", recon=False)
    chained = compute_analysis(tmp_path / "s").of_protocol("chained")
    assert set(chained.auc["protocol"]) == {"chained"} and set(chained.curves["protocol"]) == {"chained"}
    assert chained.sweep.jobs["folder"].tolist() == [tmp_path / "s" / "b"]
    with pytest.raises(AnalysisError, match="no fits with protocol 'other' \\(found: independent, chained\\)"):
        compute_analysis(tmp_path / "s").of_protocol("other")


def test_the_analysis_folder_is_not_searched(tmp_path: Path) -> None:
    sweep = write_synthetic_sweep(tmp_path / "s", cells=[(2, 32)], n_triples=1, epochs=3, recon=False)
    copy = sweep / "analysis" / "0"
    copy.mkdir(parents=True)
    (copy / PSNR_FILE).write_bytes((sweep / "0" / PSNR_FILE).read_bytes())
    assert find_psnr_files(sweep, exclude=sweep / "analysis") == [sweep / "0" / PSNR_FILE]
    assert len(find_psnr_files(sweep)) == 2


def test_span() -> None:
    assert span([20, 20]) == "20" and span([3, 2, 8]) == "2–8" and span([]) == "—"


def make_broken(kind: str, root: Path) -> Path:
    """A sweep folder that cannot be analysed; returns the file the error must name (or the folder)."""
    root.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        (root / "notes.txt").write_text("no parquet here")
        return root
    if kind == "missing_folder":
        return root / "nowhere"
    job = root / "0"
    job.mkdir()
    path = job / PSNR_FILE
    frame = psnr_frame(2, 32, {("random", 0): np.arange(5.0)})
    if kind == "corrupt":
        path.write_bytes(b"PAR1 this is not really a parquet file")
    elif kind == "truncated":  # a real file, cut short (a job killed mid-write, by a tool that was not atomic)
        write_psnr(frame, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "missing_columns":
        pd.DataFrame({"step": [0, 1], "value": [1.0, 2.0]}).to_parquet(path)
    elif kind == "wrong_dtype":
        frame.assign(psnr=frame["psnr"].astype(str)).to_parquet(path)
    elif kind == "duplicate_job":
        write_cell(job, 2, 32, {("random", 0): np.arange(3.0)}, recon=False)
        write_cell(root / "1", 2, 32, {("random", 0): np.arange(3.0)}, recon=False)
        return root / "1" / PSNR_FILE
    elif kind == "no_fit_rows":
        frame.assign(phase="prefit").to_parquet(path)
    elif kind == "gap":
        frame[frame["epoch"] != 2].to_parquet(path)
    elif kind == "null_key":
        frame.assign(scheme=[None] + ["random"] * (len(frame) - 1)).to_parquet(path)
    return path


ERROR_CASES = {
    "empty": "no psnr.parquet found",
    "missing_folder": "no such folder",
    "corrupt": "not a readable parquet file",
    "truncated": "not a readable parquet file",
    "missing_columns": "missing column(s) hls, hfs",
    "wrong_dtype": "column 'psnr' has type",
    "duplicate_job": "is also in",
    "no_fit_rows": "no rows with phase == 'fit'",
    "gap": "not 0..n-1",
    "null_key": "column 'scheme' has null values",
}


@pytest.mark.parametrize("kind", list(ERROR_CASES))
def test_unusable_input_raises_one_line_naming_the_file(tmp_path: Path, kind: str) -> None:
    named = make_broken(kind, tmp_path / "sweep")
    with pytest.raises(AnalysisError) as info:
        load_sweep(named if kind == "missing_folder" else tmp_path / "sweep")
    message = str(info.value)
    assert str(named) in message and ERROR_CASES[kind] in message and "\n" not in message


def test_recon_checks(tmp_path: Path) -> None:
    sweep = write_synthetic_sweep(tmp_path / "s", cells=[(2, 32)], n_triples=2, epochs=12)
    arrays = load_recon(sweep / "0" / RECON_FILE)
    assert arrays["recon"].shape[:2] == (6, 3) and arrays["recon"].dtype == np.uint8
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(AnalysisError, match="not a readable npz file"):
        load_recon(bad)
    np.savez(tmp_path / "partial.npz", **{k: v for k, v in arrays.items() if k != "psnr"})
    with pytest.raises(AnalysisError, match=r"missing key\(s\) psnr"):
        load_recon(tmp_path / "partial.npz")
    np.savez(tmp_path / "shape.npz", **{**arrays, "psnr": arrays["psnr"][:, :1]})
    with pytest.raises(AnalysisError, match="shapes do not match"):
        load_recon(tmp_path / "shape.npz")


def test_one_line_keeps_the_end_of_a_long_message() -> None:
    long = "/a/very/long/path/" * 30 + "psnr.parquet: is also in\n/another/folder: a job run twice?"
    assert one_line(long) == " ".join(long.split())  # a few hundred characters: whole, on one line
    huge = "start " + "x" * 5000 + " the remedy"
    cut = one_line(huge)
    assert len(cut) <= 2000 and cut.startswith("start ") and cut.endswith(" the remedy") and " ... " in cut


def test_a_cell_in_two_folders_is_read_once_when_its_copies_agree(tmp_path: Path, capsys) -> None:
    """Cells run on two machines: the folders read as one sweep; a cell copied into both is read once, from the
    first folder, with one info line (here the jobs' run.json record their files' hashes, as a real job's do)."""
    whole = write_synthetic_sweep(tmp_path / "whole", cells=[(2, 32), (3, 32)], n_triples=2, epochs=5)
    for job in ("0", "1"):
        complete(whole / job, json.loads((whole / job / RUN_FILE).read_text()))
    a = copy_jobs(whole, tmp_path / "a", ["0"])
    b = copy_jobs(whole, tmp_path / "b", ["1", "0"], ["1", "copy"])
    capsys.readouterr()
    merged, single = load_sweep([a, b]), load_sweep(whole)
    pd.testing.assert_frame_equal(merged.fits, single.fits)
    pd.testing.assert_frame_equal(merged.members, single.members)
    assert merged.roots == (a, b) and merged.root == a and merged.name == f"{a}, {b}"
    assert merged.jobs[["sweep", "folder"]].values.tolist() == [[a, a / "0"], [b, b / "1"]]
    assert merged.copies[["sweep", "folder", "hls", "hfs"]].values.tolist() == [[b, b / "copy", 2, 32]]
    info = f"info: {b / 'copy'}: cell 2x32 (independent) is also in {a / '0'}, the same study and results: read once"
    assert capsys.readouterr().err.strip().splitlines() == [info]


@pytest.mark.parametrize("change", ["results", "study"])
def test_copies_of_a_cell_that_differ_are_refused_in_one_line_naming_both_folders(tmp_path: Path, change: str) -> None:
    """The same cell in two folders with other numbers (rerun elsewhere) or of another study (the same numbers,
    another train.lr recorded): which one the study means is not for the analysis to choose."""
    traj = ramp_trajectories(2, 5)
    a, b = tmp_path / "cluster", tmp_path / "laptop"
    for hls in (2, 3):
        write_cell(a / f"{hls}hls_32hfs", hls, 32, traj, recon=False, study=study_of(hls, 32))
    other = {key: curve + 0.25 for key, curve in traj.items()} if change == "results" else traj
    study = study_of(2, 32, train__lr=2e-4) if change == "study" else study_of(2, 32)
    write_cell(b / "2hls_32hfs", 2, 32, other, recon=False, study=study)
    with pytest.raises(AnalysisError) as info:
        load_sweep([a, b])
    message = str(info.value)
    why = {"results": "other results (the sha256 of psnr.parquet differs)", "study": "another study (train.lr differ)"}
    assert "\n" not in message and why[change] in message and "cell 2x32 (independent)" in message
    assert str(a / "2hls_32hfs") in message and str(b / "2hls_32hfs") in message


def test_the_cell_of_a_copy_is_told_by_the_keys_swept_in_either_folder(tmp_path: Path) -> None:
    """Folder a sweeps train.lr over one cell; folder b holds a copy of its lr=2e-4 job: that job's copy, not a
    second job of the cell with another lr."""
    a = write_variant_sweep(tmp_path / "a", [{"train__lr": 1e-4}, {"train__lr": 2e-4}], cells=[(2, 32)], epochs=5)
    name = "2hls_32hfs,train.lr=0.0002"
    b = copy_jobs(a, tmp_path / "b", [name])
    loaded = load_sweep([a, b])
    assert sorted(loaded.jobs["train.lr"]) == [1e-4, 2e-4] and all(loaded.jobs["sweep"] == a)
    assert loaded.copies["folder"].tolist() == [b / name] and loaded.copies["train.lr"].tolist() == [2e-4]


def test_folders_given_twice_or_one_inside_another_are_refused(tmp_path: Path) -> None:
    sweep = write_synthetic_sweep(tmp_path / "s", cells=[(2, 32)], n_triples=1, epochs=3, recon=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    for given, message in [
        ([sweep, tmp_path / "s"], f"{tmp_path / 's'}: given twice (as {sweep})"),
        ([sweep / "0", sweep], f"{sweep / '0'} is inside {sweep}: give each sweep folder once"),
        ([sweep, empty], f"{empty}: no psnr.parquet found below this folder"),
        ([sweep, tmp_path / "nowhere"], f"{tmp_path / 'nowhere'}: no such folder"),
        ([], "no sweep folder given"),
    ]:
        with pytest.raises(AnalysisError) as info:
            load_sweep(given)
        assert message in str(info.value) and "\n" not in str(info.value)
