"""`python -m prefit.check`: what a new machine would run, whether to trust it, and how long the study takes."""

from __future__ import annotations

import pytest

from prefit import check
from prefit.engine import flops_per_member_epoch


def test_check_prints_the_device_probe_step_jobs_timings_and_estimates(capsys):
    assert check.main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for line in ("device ", "probe ", "auto runs  the compiled step", "jobs ", "2x32 ", "3x128 "):
        assert line in out, out
    assert "compiled step trusted" in out
    assert "estimated wall time of make run (4 cells): about" in out
    assert "estimated wall time of one protocol's grid (42 cells): about" in out


def test_engines_that_disagree_fail_the_check(monkeypatch, capsys):
    monkeypatch.setattr(check, "time_cell", lambda hls, hfs, step, device: check.CellTiming(hls, hfs, 1.0, 2.0, 0.5))
    assert check.main(["--device", "cpu"]) == 1
    assert "FAIL: the engines disagree by 0.5 dB" in capsys.readouterr().out


def test_the_rate_model_fits_both_timed_cells_and_scales_by_flops():
    small, wide = check.CellTiming(2, 32, 0.5, 0, 0), check.CellTiming(3, 128, 4.0, 0, 0)
    ms = check.member_epoch_ms([wide, small])
    assert ms(2, 32) == pytest.approx(0.5) and ms(3, 128) == pytest.approx(4.0)
    per_flop = (4.0 - 0.5) / (flops_per_member_epoch(3, 128) - flops_per_member_epoch(2, 32))
    assert ms(8, 1024) - ms(3, 128) == pytest.approx(
        per_flop * (flops_per_member_epoch(8, 1024) - flops_per_member_epoch(3, 128))
    )
    slower_small = check.member_epoch_ms([check.CellTiming(2, 32, 5.0, 0, 0), wide])  # no fixed cost fits: flops only
    assert slower_small(3, 128) == pytest.approx(4.0) and slower_small(6, 256) > 4.0


def test_a_cuda_check_without_cuda_is_one_line_and_exit_2(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert check.main(["--device", "cuda"]) == 2
    assert capsys.readouterr().err.startswith("error: train.device=cuda but torch sees no CUDA device")
