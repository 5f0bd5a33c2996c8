"""Execute notebooks/analysis.ipynb on an analysis folder and save the executed copy beside the results.

    python -m prefit.notebook outputs/sweeps/run/analysis [--cell 2x32] [--out PATH]

The notebook's cell tagged `parameters` is replaced by the given values (papermill's convention, without
needing papermill), then nbclient runs it top to bottom in the current interpreter's kernel.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefit.analysis import AnalysisError, read_analysis
from prefit.errors import OneLineParser, fail
from prefit.io import atomic_path

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "analysis.ipynb"


def execute_notebook(
    analysis_dir: str | Path, out: str | Path | None = None, cell: str | None = None, kernel_name="python3", timeout=300
) -> Path:
    """Run the analysis notebook on `analysis_dir`; write the executed notebook to `out` and return its path.
    AnalysisError if the folder holds no analysis in the current layout (prefit.analysis.read_analysis)."""
    try:
        import nbclient
        import nbformat
    except ImportError as error:  # the `notebook` extra: pip install -e '.[notebook]' (make install has it)
        raise ImportError(f"executing the notebook needs {error.name}: pip install -e '.[notebook]'") from None
    analysis_dir = Path(analysis_dir).resolve()
    read_analysis(analysis_dir)  # an AnalysisError in one line for a folder without an analysis, or an older one
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = f"ANALYSIS_DIR = {str(analysis_dir)!r}\nCELL = {cell!r}\n"
    resources = {"metadata": {"path": str(NOTEBOOK.parent)}}
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name=kernel_name, resources=resources).execute()
    out = Path(out) if out else analysis_dir / "analysis.ipynb"
    with atomic_path(out) as tmp:
        nbformat.write(nb, tmp)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m prefit.notebook", description=__doc__.splitlines()[0])
    parser.add_argument("analysis_dir", help="an analysis folder written by python -m prefit.analyze")
    parser.add_argument("--cell", default=None, help="the cell whose curves to show, e.g. 2x32 (default: first)")
    parser.add_argument("--out", default=None, help="where to write the executed notebook")
    args = parser.parse_args(argv)
    try:
        path = execute_notebook(args.analysis_dir, args.out, args.cell)
    except (AnalysisError, ImportError) as error:
        return fail(error)
    except Exception as error:  # a cell failed: nbclient's message is long; its first line says which
        print(f"error: the notebook failed: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"executed notebook: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
