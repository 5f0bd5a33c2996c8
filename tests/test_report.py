"""prefit.report on two synthetic sweeps, one per protocol: the files, the checks and the written conclusion."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prefit.analyze import STATS_COLUMNS
from prefit.report import analyse_protocol, compare_triples, conclusion_paragraph, main, triples_sentence, write_report

try:
    from tests.synthetic_sweep import ramp_trajectories, write_cell
except ImportError:  # tests/ is not a package: pytest puts it on sys.path itself
    from synthetic_sweep import ramp_trajectories, write_cell

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[1]
COMMON = [(2, 32), (3, 32)]
N_TRIPLES, EPOCHS = 8, 20
WALL_S = {(2, 32): 30.0, (3, 32): 45.0, (2, 64): 600.0}


def write_protocol_sweep(root: Path, protocol: str, cells: list[tuple[int, int]]) -> Path:
    """A sweep in which other_class is 5 dB above random at every epoch under chained (as the original's figures
    suggest), and under independent differs from it by alternating small amounts (no clear difference)."""
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
    out = tmp_path_factory.mktemp("docs") / "findings.md"
    return write_report(sweeps["independent"], sweeps["chained"], out, psnr_cap=59.0)


def test_report_files(report: dict[str, Path]) -> None:
    out = report["findings.md"]
    figures = {f"findings/psnr_{h}hls_{f}hfs.png" for h, f in COMMON}
    figures |= {"findings/paired_differences.png", "findings/paired_differences_capped.png"}
    assert set(report) == {"findings.md"} | figures
    for name in figures:
        data = report[name].read_bytes()
        assert report[name] == out.parent / name and data[:8] == PNG_SIGNATURE and len(data) > 1024, name
    text = out.read_text()
    # Every image link is relative to the report and points at a file that exists; every figure is linked.
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert set(links) == figures
    assert all(not Path(link).is_absolute() and (out.parent / link).is_file() for link in links)
    assert not [p for p in out.parent.rglob("*.tmp")]


def test_report_content(report: dict[str, Path], sweeps: dict[str, Path]) -> None:
    text = report["findings.md"].read_text()
    for heading in ("## What changes in the conclusion", "## Paired differences from random",
                    "## Mean AUC per scheme", "## PSNR curves per cell", "## Runs"):  # fmt: skip
        assert heading in text
    assert "### 2x32" in text and "### 3x32" in text
    assert "compared: the 2 cell(s) in both sweeps: 2x32, 3x32" in text
    assert "only in the independent sweep (left out): 2x64" in text
    assert "the two sweeps hold the same triples" in text and "`target_index` matches" in text
    # The conclusion, from the numbers: other_class beats random under chained, not under independent.
    assert "In the smallest common cell, 2x32, under chained, Δ = +" in text
    assert "other_class beats random in 2 under chained and in 0 under independent" in text
    assert "holds only under the chained protocol" in text
    assert "With PSNR capped at 59 dB" in text
    # Runs: cells, triples, epochs and the sum of wall_s per sweep (the independent one has a third job).
    runs = text[text.index("## Runs") :]
    assert f"| chained | `{sweeps['chained']}` | 2 | {N_TRIPLES} | {EPOCHS} |" in runs
    assert "| 2 (2) | 1 min 15 s | cpu |" in runs  # 30 s + 45 s
    assert "| 3 (3) | 11 min 15 s | cpu |" in runs  # + 600 s
    assert "| 2x32 | 8 | 8 | 20 | 20 | 30.0 s | 30.0 s |" in runs
    # The stats tables give each protocol's Δ with its CI and p.
    row = next(line for line in text.splitlines() if line.startswith("| 2x32 | other_class | +"))
    assert row.count("[") == 2 and row.count("|") == 11


def test_cli_with_the_hydra_spelling(sweeps: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "notes" / "protocols.md"
    argv = ["--independent", str(sweeps["independent"]), "--chained", str(sweeps["chained"]), "--out", str(out)]
    assert main(argv) == 0
    assert out.is_file() and (tmp_path / "notes" / "protocols" / "psnr_2hls_32hfs.png").is_file()
    assert "PSNR cap: off" in out.read_text()
    assert not (tmp_path / "notes" / "protocols" / "paired_differences_capped.png").exists()
    capsys.readouterr()
    # The chained sweep passed as independent: no fits of that protocol, one line, status 2.
    bad = ["--independent", str(sweeps["chained"]), "--chained", str(sweeps["chained"]), "--out", str(out)]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no fits with protocol 'independent'" in err[0]
    assert main([*argv, "analysis.psnr_cap=oops"]) == 2
    assert "analysis.psnr_cap must be a number" in capsys.readouterr().err


def test_no_common_cell_is_an_error(tmp_path: Path) -> None:
    chained = write_protocol_sweep(tmp_path / "c", "chained", [(2, 32)])
    independent = write_protocol_sweep(tmp_path / "i", "independent", [(2, 64)])
    with pytest.raises(Exception, match="no cell is in both sweeps"):
        write_report(independent, chained, tmp_path / "findings.md")


def test_mismatched_triples_are_reported(sweeps: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "independent"
    shutil.copytree(sweeps["independent"], other)
    path = other / "0" / "psnr.parquet"  # cell 2x32: triple 1 fits another A
    frame = pd.read_parquet(path)
    frame.loc[(frame["triple"] == 1) & (frame["phase"] == "fit"), "target_index"] += 7
    frame.to_parquet(path, index=False)
    runs = [analyse_protocol(sweeps["chained"], "chained"), analyse_protocol(other, "independent")]
    check = compare_triples(*runs, COMMON).set_index(["hls", "hfs"])
    assert check.loc[(2, 32), "target_mismatch"] == 1 and check.loc[(3, 32), "target_mismatch"] == 0
    sentence = triples_sentence(check.reset_index(), ("chained", "independent"))
    assert sentence.startswith("**The triples differ** in 1 of 2 common cell(s): 2x32")
    same = triples_sentence(compare_triples(runs[0], analyse_protocol(sweeps["independent"], "independent"), COMMON),
                            ("chained", "independent"))  # fmt: skip
    assert "hold the same triples" in same and "differ by at most 0 dB·epoch" in same


def stats_frame(
    rows: dict[tuple[int, int, str], tuple[float, float, float, float]], protocol: str, n: int = 20
) -> pd.DataFrame:
    """A stats table from {(hls, hfs, scheme): (mean, ci_low, ci_high, p)}, n pairs each."""
    records = [
        {"hls": h, "hfs": f, "protocol": protocol, "scheme": s, "baseline": "random", "n": n, "mean_diff_auc": m,
         "ci_low": lo, "ci_high": hi, "p_wilcoxon": p, "n_diverged": 0, "n_saturated": 0}
        for (h, f, s), (m, lo, hi, p) in rows.items()
    ]  # fmt: skip
    return pd.DataFrame.from_records(records, columns=STATS_COLUMNS)


BETTER, UNCLEAR, WORSE = (500.0, 200.0, 800.0, 0.001), (20.0, -50.0, 90.0, 0.6), (-300.0, -500.0, -100.0, 0.002)


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
    stats = {
        "chained": stats_frame({(2, 32, "other_class"): chained, (2, 64, "other_class"): UNCLEAR,
                                (2, 32, "same_class"): BETTER}, "chained"),
        "independent": stats_frame({(2, 32, "other_class"): independent, (2, 64, "other_class"): UNCLEAR,
                                    (2, 32, "same_class"): UNCLEAR}, "independent"),
    }  # fmt: skip
    text = conclusion_paragraph(stats, cells)
    assert expected in text
    assert "pre-fitting on an image of a different class helps small models most" in text
    assert "same_class 1 / 0, of 2" in text
    if chained == BETTER and independent == BETTER:
        assert "under independent it is 2x32: 100% of the gain under chained" in text


def test_conclusion_warns_when_too_few_triples_for_the_test() -> None:
    stats = {p: stats_frame({(2, 32, "other_class"): UNCLEAR}, p, n=5) for p in ("chained", "independent")}
    assert "smallest exact two-sided Wilcoxon p is 2/2^5 = 0.0625" in conclusion_paragraph(stats, [(2, 32)])
    stats = {p: stats_frame({(2, 32, "other_class"): UNCLEAR}, p, n=6) for p in ("chained", "independent")}
    assert "smallest exact" not in conclusion_paragraph(stats, [(2, 32)])


def test_conclusion_without_other_class() -> None:
    stats = {p: stats_frame({(2, 32, "same_class"): BETTER}, p) for p in ("chained", "independent")}
    assert "so the original's claim cannot be checked here" in conclusion_paragraph(stats, [(2, 32)])


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_report_target() -> None:
    result = subprocess.run(
        ["make", "-n", "report", "SWEEP_INDEPENDENT=a/i", "SWEEP_CHAINED=b/c", "REPORT_ARGS=analysis.psnr_cap=59"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    command = "-m prefit.report --independent a/i --chained b/c --out docs/findings.md analysis.psnr_cap=59"
    assert command in result.stdout


def test_stats_only_for_common_cells_are_used(report: dict[str, Path]) -> None:
    text = report["findings.md"].read_text()
    before_runs = text[: text.index("## Runs")]
    assert "2x64" not in before_runs.replace("only in the independent sweep (left out): 2x64", "")
    assert np.isfinite(float(re.search(r"differ by at most ([\d.]+) dB", text).group(1)))


def test_durations_round_once():
    from prefit.report import _duration

    assert _duration(239.7) == "4 min 00 s"  # not "3 min 60 s"
    assert _duration(3599.6) == "1 h 00 min"
    assert _duration(75.2) == "1 min 15 s"
