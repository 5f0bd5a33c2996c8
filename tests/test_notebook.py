"""notebooks/analysis.ipynb runs top to bottom on the analysis of a small synthetic sweep."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from prefit.analysis import analyze
from prefit.notebook import execute_notebook

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from synthetic_sweep import write_synthetic_sweep  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "analysis.ipynb"
KERNEL = "prefit-test-python"


@pytest.fixture
def kernel_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec that runs this very interpreter, whatever kernels the machine has (or lacks)."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    paths = [str(tmp_path / "jupyter"), os.environ.get("JUPYTER_PATH", "")]
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(p for p in paths if p))
    return KERNEL


@pytest.fixture(scope="module")
def analysis_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nb")
    sweep = write_synthetic_sweep(
        root / "sweep", cells=[(2, 32), (3, 32)], n_triples=3, epochs=25, nonfinite=True, new_schemes=True
    )
    analyze(sweep, root / "analysis")  # the default cap, 59 dB
    return root / "analysis"


def test_notebook_structure() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    assert "ANALYSIS_DIR = " in params[0].source and "CELL = None" in params[0].source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed without outputs


@pytest.mark.slow  # a Jupyter kernel in a subprocess, twice: `make test` runs it, `make test-fast` not
@pytest.mark.parametrize("cell", [None, "3x32"])
def test_notebook_executes(analysis_dir: Path, kernel_name: str, cell: str | None, tmp_path: Path) -> None:
    executed = execute_notebook(analysis_dir, tmp_path / "run.ipynb", cell=cell, kernel_name=kernel_name, timeout=120)
    nb = nbformat.read(executed, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the saved box plot and at least one figure drawn in the notebook
    assert any("text/markdown" in o.get("data", {}) for o in outputs)  # the summary
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "2 cells" in text
    assert "measures, in the order they are read: capped AUC, epochs to 30 dB, epochs to 40 dB, raw AUC" in text
    assert "verdicts: 40 comparisons, 10 cells x schemes over 4 measures" in text  # 2 cells x 5 schemes x 4
    markdown = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    verdicts = markdown[0]  # the first table the notebook shows: the verdicts, capped AUC and time first
    assert verdicts.startswith("| cell | scheme | capped AUC | epochs to 30 dB | epochs to 40 dB | raw AUC |")
    assert "multi_same" in verdicts and "†" in verdicts  # the nonfinite cell's +inf fit passes 100 dB
    raw = next(i for i, m in enumerate(markdown) if m.startswith("| cell | scheme | Δ raw AUC"))
    assert raw > 0 and markdown.index(verdicts) < raw  # the raw AUC comes after, for comparison
    assert "raw AUC flagged in 1 cell(s)" in text


def test_an_old_analysis_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from prefit.notebook import main

    old = tmp_path / "analysis"
    old.mkdir()
    pd.DataFrame({"hls": [2], "mean_diff_auc": [1.0]}).to_parquet(old / "stats.parquet")
    assert main([str(old)]) == 2 and main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "older layout" in err[0] and "python -m prefit.analyze" in err[1]
