"""`make study`: both protocols, both analyses and the protocol report, narrowed to two tiny cells; then resumed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow  # subprocess sweeps: `make test-fast` leaves them out

REPO = Path(__file__).resolve().parents[1]
CELLS = ["1hls_8hfs,train.epochs=20", "1hls_16hfs,train.epochs=20"]


def make_study(study: Path, data: Path) -> subprocess.CompletedProcess:
    """`make study` with this interpreter (PY=...) and its install stamp taken as done (-o), so no venv is built."""
    venv = Path(sys.prefix)
    args = (
        f"+experiment=smoke model.hls=1 model.hfs=8,16 train.epochs=20 dataset=cifar_dir dataset.path={data} "
        "hydra.launcher.n_jobs=1 train.progress=false"
    )
    command = [
        "make",
        "-C",
        str(REPO),
        "study",
        f"VENV={venv}",
        f"PY={sys.executable}",
        "-o",
        f"{venv}/.installed",
        f"STUDY_DIR={study}",
        f"ARGS={args}",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_study_runs_both_protocols_reports_and_resumes(cifar_dir, tmp_path):
    study = tmp_path / "study"
    docs_findings = REPO / "docs" / "findings.md"
    before = docs_findings.stat().st_mtime_ns if docs_findings.exists() else None
    first = make_study(study, cifar_dir)
    for protocol in ("independent", "chained"):
        sweep = study / protocol
        assert sorted(p.parent.name for p in sweep.glob("*/psnr.parquet")) == sorted(CELLS)
        for cell in CELLS:
            rows = pd.read_parquet(sweep / cell / "psnr.parquet")
            assert (rows.protocol == protocol).all() and rows.epoch.max() == 19
            assert rows.triple.nunique() == 3  # the smoke preset, composed with grid/repro, narrowed by ARGS
        assert (sweep / "analysis" / "summary.md").is_file() and (sweep / "analysis" / "auc.parquet").is_file()
    findings = (study / "findings.md").read_text()
    assert "chained" in findings and "independent" in findings
    assert list((study / "findings").glob("*.png"))
    assert (docs_findings.stat().st_mtime_ns if docs_findings.exists() else None) == before  # docs/ untouched

    done = {p: p.stat().st_mtime_ns for p in study.glob("*/*/psnr.parquet")}
    again = make_study(study, cifar_dir)
    logs = again.stdout + again.stderr
    assert logs.count("skipped") >= 4, logs[-3000:]  # every cell of both sweeps
    assert {p: p.stat().st_mtime_ns for p in study.glob("*/*/psnr.parquet")} == done
    assert json.loads((study / "chained" / CELLS[0] / "run.json").read_text())["status"] == "complete"
    assert "protocol report" in first.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_study_merges_the_study_folders_run_elsewhere(tmp_path):
    """STUDY_MERGE names study folders run on other machines (independent/ and chained/ in each): both analyses
    and the report read them with STUDY_DIR's own; without it the commands are those of one folder."""
    venv, study = Path(sys.prefix), tmp_path / "study"
    command = ["make", "-n", "-C", str(REPO), "study", f"VENV={venv}", "-o", f"{venv}/.installed", f"STUDY_DIR={study}"]

    def folders(*extra: str) -> list[list[str]]:
        proc = subprocess.run([*command, *extra], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        text = proc.stdout.replace("\\\n", " ")
        return [line.split(" -m ")[1].split()[1:] for line in text.splitlines() if "prefit.analyze" in line] + [
            line.split(" -m prefit.report ")[1].split()[:-2] for line in text.splitlines() if "prefit.report" in line
        ]

    merged = f"{tmp_path}/gpu {tmp_path}/laptop"
    by = {p: [f"{study}/{p}", f"{tmp_path}/gpu/{p}", f"{tmp_path}/laptop/{p}"] for p in ("independent", "chained")}
    report = ["--independent", *by["independent"], "--chained", *by["chained"]]
    assert folders(f"STUDY_MERGE={merged}") == [by["independent"], by["chained"], report]
    one = ["--independent", f"{study}/independent", "--chained", f"{study}/chained"]
    assert folders() == [[f"{study}/independent"], [f"{study}/chained"], one]
