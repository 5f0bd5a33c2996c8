"""prefit.analysis.families: one sweep's cells fit by several model families, verdicts side by side per family, and
whether the original's question has SIREN's answer for each."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from synthetic_sweep import ramp_trajectories, study_of, write_cell, write_synthetic_sweep, write_variant_sweep

from prefit.analysis import AnalysisError
from prefit.analysis.axis import ByAxis, write_axis_report
from prefit.analysis.cli import report_main
from prefit.analysis.families import AXIS, answer
from prefit.model import n_weights

SIREN = {"model__family": "siren"}
FFN = {"model__family": "ffn", "model__w0": None, "model__sigma": 5.0, "model__features": 256, "train__lr": 1e-3}
GAUSS = {"model__family": "gauss", "model__w0": None, "model__scale": 10.0, "train__lr": 1e-3}
CELLS = [(2, 32), (3, 32)]
TRIPLES, EPOCHS = 6, 30  # six triples: the smallest Wilcoxon p (2 / 2^6) is below 0.05, so verdicts can be clear


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every family fits the same synthetic ramps (pre-fit schemes climb faster than random), except ffn's
    other_class, which starts every triple 5 dB below its random start: there ffn's answer is not SIREN's."""
    variants = {"siren": SIREN, "ffn": FFN, "gauss": GAUSS}
    root = write_variant_sweep(
        tmp_path_factory.mktemp("fam") / "sweep", list(variants.values()), CELLS, TRIPLES, EPOCHS
    )
    for hls, hfs in CELLS:
        for family, overrides in variants.items():
            traj = ramp_trajectories(TRIPLES, EPOCHS, seed=hls)
            if family == "ffn":
                traj |= {("other_class", t): traj[("random", t)] - 5.0 for t in range(TRIPLES)}
            [folder] = root.glob(f"{hls}hls_{hfs}hfs,model.family={family}*")
            write_cell(folder, hls, hfs, traj, study=study_of(hls, hfs, **overrides))
    return root


def section(text: str, title: str) -> str:
    return text.split(f"## {title}")[1].split("\n## ")[0]


def test_the_report_sets_each_family_side_by_side(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "families.md"
    written = write_axis_report(AXIS, sweep, out)
    text = out.read_text()
    verdicts = section(text, "Verdicts per family")
    assert "| capped AUC (siren) | capped AUC (ffn) | capped AUC (gauss) |" in verdicts  # one column per family
    assert "| epochs to 30 dB (siren) |" in verdicts and "| raw AUC (gauss) |" in verdicts
    assert "model.family=" not in verdicts and "model.w0" not in verdicts  # the family is a column, not a group
    assert "| other_class | capped AUC | 2 / 0 of 2 | 0 / 2 of 2 | 2 / 0 of 2 |" in verdicts  # counts per family
    assert "| same_class | capped AUC | 2 / 0 of 2 | 2 / 0 of 2 | 2 / 0 of 2 |" in verdicts
    # the header: families with their own settings
    assert "ffn (`model.sigma=5.0,model.features=256,train.lr=0.001`)" in text and "siren (`model.w0=30.0" in text
    # how hard: weights per image value, ffn's first layer reading 2 x 256 Fourier features
    hard = section(text, "How hard each family's fits are")
    assert f"| 2x32 | siren | {n_weights(2, 32) / 3072:.2f} |" in hard
    assert f"| 3x32 | ffn | {n_weights(3, 32, 512) / 3072:.2f} |" in hard and "| 3x32 | gauss |" in hard
    jobs = section(text, "Jobs")
    for hls, hfs in CELLS:
        for family in ("siren", "ffn", "gauss"):
            assert f"| {hls}x{hfs} | {family} | 2 s | — | cpu | {TRIPLES * 3} |" in jobs
    pngs = [p for p in written.values() if p.suffix == ".png"]
    assert len(pngs) == 2 + len(CELLS) and all(p.stat().st_size > 1000 for p in pngs)
    assert "families/families_psnr_3hls_32hfs.png" in text and "families/families_paired_capped.png" in text


def test_the_answer_names_where_a_family_differs_from_siren(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "families.md"
    write_axis_report(AXIS, sweep, out)
    lines = {line.split("**")[1]: line for line in out.read_text().splitlines() if line.startswith("- **")}
    assert "other_class (2, 0 of 2) beat random" in lines["siren"]  # every scheme leans SIREN's one way
    ffn = lines["ffn"]
    assert "by the capped AUC, same_class (2 better, 0 worse of 2 cells) beats random, other_class (0, 2 of 2)" in ffn
    assert "other_class (0, 2 of 2) is worse than random; by the epochs to 30 dB" in lines["ffn"]
    assert ffn.endswith("Not SIREN's answer for other_class (both measures).")  # same_class leans SIREN's way
    assert lines["gauss"].endswith("The same answer as SIREN.")
    assert "Here SIREN's answer is mixed" in out.read_text()  # same_class: neither way by epochs to 30 dB
    assert "The same answer as SIREN: gauss; a different one: ffn." in out.read_text()
    assert "What changes with the family" not in out.read_text()  # the answer names it; the table shows it all


def by_family(verdicts: dict[str, list[str]]) -> ByAxis:
    """A ByAxis holding only what `answer` reads: other_class's capped AUC verdicts per family, one per cell."""
    rows = [
        {"family": f, "scheme": "other_class", "measure": "auc_capped", "verdict": v}
        for f, found in verdicts.items()
        for v in found
    ]
    empty = pd.DataFrame()
    auc = pd.DataFrame(columns=["auc_capped"])
    return ByAxis(AXIS, None, pd.DataFrame(rows), auc, empty, empty, list(verdicts), {})  # type: ignore[arg-type]


def test_the_same_answer_only_when_the_counts_lean_the_same_way() -> None:
    found = answer(by_family({"siren": ["beats", "unclear"], "ffn": ["beats", "worse"], "gauss": ["beats", "beats"]}))
    assert found["answer"]["verdict"].endswith("The same answer as SIREN: gauss; a different one: ffn.")
    assert found["answer"]["verdict"].startswith("Here pre-fitting helps SIRENs")
    assert "other_class (1 better, 1 worse of 2 cells) leans neither way" in found["answer"]["lines"][1]
    assert found["answer"]["lines"][1].endswith("Not SIREN's answer for other_class (capped AUC).")
    alone = answer(by_family({"ffn": ["worse"], "gauss": ["beats"]}))["answer"]
    assert "no SIREN in this sweep" in alone["verdict"] and not any("SIREN's answer" in x for x in alone["lines"])


def test_a_sweep_over_another_key_is_refused_in_one_line(tmp_path: Path) -> None:
    plain = write_synthetic_sweep(tmp_path / "plain", cells=[(2, 32)], n_triples=3, epochs=10)
    with pytest.raises(AnalysisError, match="do not differ in model.family"):
        write_axis_report(AXIS, plain, tmp_path / "r.md")
    seeds = [SIREN | {"seed": 1}, FFN | {"seed": 2}]
    mixed = write_variant_sweep(tmp_path / "seed", seeds, cells=[(2, 32)], n_triples=3, epochs=10, recon=False)
    with pytest.raises(AnalysisError, match="more than the cell and model.family") as info:
        write_axis_report(AXIS, mixed, tmp_path / "r.md")
    assert "also seed" in str(info.value) and "\n" not in str(info.value)
    two_w0 = [SIREN, SIREN | {"model__w0": 20.0}, FFN]  # a family's own key varying within the family
    w0 = write_variant_sweep(tmp_path / "w0", two_w0, cells=[(2, 32)], n_triples=3, epochs=10, recon=False)
    with pytest.raises(AnalysisError, match="model.w0 differ within one family"):
        write_axis_report(AXIS, w0, tmp_path / "r.md")


def test_the_command_line_and_the_protocol_report_section(sweep: Path, tmp_path: Path, capsys) -> None:
    assert report_main(["families", str(sweep)]) == 0 and (sweep.parent / "families.md").is_file()
    assert report_main(["families", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # one line
    independent = write_synthetic_sweep(tmp_path / "i", cells=[(2, 32)], n_triples=3, epochs=20)
    chained = write_synthetic_sweep(tmp_path / "c", cells=[(2, 32)], n_triples=3, epochs=20, protocol="chained")
    findings = tmp_path / "findings.md"
    argv = ["--independent", str(independent), "--chained", str(chained), "--families", str(sweep)]
    assert report_main([*argv, "--out", str(findings)]) == 0
    text = findings.read_text()
    assert "## Beyond SIREN: other neural fields and a shared encoder" in text
    assert "### Does the original's question have the same answer for other families?" in text
    assert "capped AUC (ffn)" in text and "a different one: ffn." in text
    assert (tmp_path / "findings" / "families_paired_capped.png").is_file()
    assert (tmp_path / "findings" / "families_psnr_2hls_32hfs.png").is_file()
