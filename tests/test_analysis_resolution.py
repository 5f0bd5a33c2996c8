"""prefit.analysis.resolution: one sweep's cells at several image sizes, verdicts side by side per resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_sweep import write_synthetic_sweep, write_variant_sweep

from prefit.analysis import AnalysisError
from prefit.analysis.axis import write_axis_report
from prefit.analysis.cli import report_main
from prefit.analysis.protocol import write_report
from prefit.analysis.resolution import AXIS

SIDES = [{"dataset__resolution": 64}, {"dataset__resolution": 32}]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_variant_sweep(tmp_path_factory.mktemp("res") / "sweep", SIDES, n_triples=5, epochs=30)


def test_the_report_sets_each_resolution_side_by_side(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "resolution.md"
    written = write_axis_report(AXIS, sweep, out)
    text = out.read_text()
    assert "capped AUC (32x32)" in text and "capped AUC (64x64)" in text  # one column per resolution, 32 first
    assert text.index("(32x32)") < text.index("(64x64)")
    # how hard: weights per image value, 2x32's 2,307 weights over 3 x 32 x 32 and 3 x 64 x 64 values
    assert "| 2x32 | 32x32 | 0.75 |" in text and "| 2x32 | 64x64 | 0.19 |" in text
    assert text.count("| 3x32 |") >= 2 + 2  # difficulty and jobs tables: both resolutions each
    verdicts = text.split("## Verdicts per resolution")[1].split("##")[0]
    assert "dataset.resolution=" not in verdicts and "| 3x32 | other_class |" in verdicts  # a column of its own
    pngs = [p for p in written.values() if p.suffix == ".png"]
    assert len(pngs) == 2 + 2 and all(p.stat().st_size > 1000 for p in pngs)  # paired differences, curves per cell
    assert "resolution_psnr_3hls_32hfs.png" in text
    # the synthetic pre-fit schemes climb faster than random at every epoch: they lead to the end, ahead
    lead = text.split("| cell | scheme | leads random until epoch (32x32)")[1].split("\n\n")[0]
    assert "| 2x32 | same_class | the end | +" in lead and "| 3x32 | other_class | the end | +" in lead


def test_a_sweep_over_another_key_is_refused_in_one_line(tmp_path: Path) -> None:
    lr = write_variant_sweep(tmp_path / "lr", [{"train__lr": 1e-4}, {"train__lr": 2e-4}], n_triples=3, epochs=10)
    with pytest.raises(AnalysisError, match="more than the cell and dataset.resolution"):
        write_axis_report(AXIS, lr, tmp_path / "r.md")
    plain = write_synthetic_sweep(tmp_path / "plain", cells=[(2, 32)], n_triples=3, epochs=10)
    with pytest.raises(AnalysisError, match="do not differ in dataset.resolution"):
        write_axis_report(AXIS, plain, tmp_path / "r.md")


def test_the_command_line_and_the_protocol_report_section(sweep: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "by_side.md"
    assert report_main(["resolution", str(sweep), "--out", str(out)]) == 0 and out.is_file()
    assert report_main(["resolution", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # one line
    independent = write_synthetic_sweep(tmp_path / "i", cells=[(2, 32)], n_triples=3, epochs=20)
    chained = write_synthetic_sweep(tmp_path / "c", cells=[(2, 32)], n_triples=3, epochs=20, protocol="chained")
    findings = tmp_path / "findings.md"
    write_report(independent, chained, findings, resolution=sweep)
    text = findings.read_text()
    assert "## Beyond 32x32" in text and "capped AUC (64x64)" in text
    assert (tmp_path / "findings" / "resolution_paired_capped.png").is_file()


def test_the_lead_is_the_last_epoch_a_pre_fit_start_is_ahead() -> None:
    import pandas as pd

    from prefit.analysis.axis import lead_table
    from prefit.analysis.resolution import BY

    means = {"random": [10, 20, 30, 40], "same_class": [15, 25, 28, 39], "other_class": [5, 6, 7, 8]}
    curves = pd.DataFrame(
        [
            {"hls": 2, "hfs": 32, BY: "64x64", "scheme": s, "epoch": e, "mean": float(v)}
            for s, values in means.items()
            for e, v in enumerate(values)
        ]
    )
    table = lead_table(curves, ["64x64"], BY)
    assert "| 2x32 | same_class | 1 | -1.00 |" in table  # ahead at epochs 0 and 1, behind from 2 on
    assert "| 2x32 | other_class | never | -32.00 |" in table
