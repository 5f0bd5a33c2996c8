"""The probe of the fast step (prefit.probe): trusted when it agrees with the torch step, a fallback with one
warning line when it fails under `auto`, one line and exit 2 when asked for explicitly, and verdicts cached per
device and versions. On a CPU the fast step is the compiled one; tests/test_cuda.py probes the fused one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import prefit.kernels
from prefit import probe as probes
from prefit.engine.steps import CpuStep
from prefit.errors import ConfigError

CPU = torch.device("cpu")


def test_the_compiled_step_is_trusted_and_its_verdict_cached_per_device_and_versions(monkeypatch, tmp_path):
    monkeypatch.setenv("PREFIT_CACHE", str(tmp_path))
    runs = []
    real = probes.run_probe
    monkeypatch.setattr(probes, "run_probe", lambda *a, **k: runs.append(a) or real(*a, **k))
    first = probes.probe("compiled", CPU)
    assert first.ok and not first.cached and first.gap_db < probes.TOLERANCE_DB
    stored = json.loads((tmp_path / "probe" / os.path.basename(first.file)).read_text())
    assert stored["key"]["device_name"] == first.key["device_name"] and stored["ok"] is True
    again = probes.probe("compiled", CPU)
    assert again.cached and again.ok and len(runs) == 1  # the second job skips the probe
    newer = dict(probes.software_versions(), torch="99.0")
    monkeypatch.setattr(probes, "software_versions", lambda: newer)
    assert not probes.probe("compiled", CPU).cached and len(runs) == 2  # another torch: probed anew


def test_a_damaged_cache_file_is_probed_again(monkeypatch, tmp_path):
    monkeypatch.setenv("PREFIT_CACHE", str(tmp_path))
    path = probes.cache_file(probes.probe_key("compiled", CPU))
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    verdict = probes.probe("compiled", CPU)
    assert verdict.ok and not verdict.cached
    assert json.loads(path.read_text())["ok"] is True  # rewritten whole


def test_a_step_that_computes_wrong_gradients_is_not_trusted(monkeypatch):
    real = CpuStep.__call__

    def wrong(self):
        loss, pred, grads = real(self)
        grads[-1][1].neg_()  # the last bias climbs instead of descending
        return loss, pred, grads

    monkeypatch.setattr(CpuStep, "__call__", wrong)
    verdict = probes.run_probe("compiled", CPU)
    assert not verdict.ok and verdict.gap_db > probes.TOLERANCE_DB
    assert "differs from the torch step's" in verdict.cause


def test_a_step_that_fails_to_compile_is_a_verdict_not_a_crash(monkeypatch):
    def broken(*args):
        raise RuntimeError("Failed in nopython mode pipeline (step: native lowering)")

    monkeypatch.setattr(prefit.kernels, "siren_step", broken)
    verdict = probes.run_probe("compiled", CPU)
    assert not verdict.ok and verdict.gap_db is None
    assert "the compiled step failed: Failed in nopython mode" in verdict.cause


def test_auto_falls_back_and_an_explicit_step_fails(monkeypatch):
    monkeypatch.setenv(probes.FAULT_ENV, "mismatch")
    choice = probes.choose_step("auto", CPU)
    assert choice.step == "torch" and "failed its probe" in choice.warning and not choice.verdict.ok
    assert choice.verdict.file is None  # an injected failure is never cached
    with pytest.raises(ConfigError, match="train.kernels=compiled failed its probe .* differs .* by 1 dB"):
        probes.choose_step("compiled", CPU)
    assert probes.choose_step("torch", CPU).verdict is None  # the plain step needs no probe
    monkeypatch.setenv(probes.FAULT_ENV, "typo")
    with pytest.raises(ConfigError, match="PREFIT_PROBE_FAULT must be one of compile, mismatch"):
        probes.choose_step("auto", CPU)


def _train(cifar_dir, out, fault: str, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "prefit.train", "+experiment=smoke", "model.hls=1", "model.hfs=8"]
    command += ["dataset=cifar_dir", f"dataset.path={cifar_dir}", f"hydra.run.dir={out}", "train.progress=false"]
    env = dict(os.environ, **{probes.FAULT_ENV: fault})
    return subprocess.run([*command, *extra], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("fault", ["compile", "mismatch"])
def test_a_job_whose_probe_fails_runs_the_torch_step_says_so_once_and_records_it(cifar_dir, tmp_path, fault):
    out = tmp_path / "run"
    proc = _train(cifar_dir, out, fault)
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "the compiled step failed its probe" in warnings[0], warnings
    assert "the torch step runs instead" in warnings[0]
    run = json.loads((out / "run.json").read_text())
    assert run["step"] == "torch" and run["status"] == "complete"
    assert run["probe"]["ok"] is False and run["probe"]["requested"] == "auto"
    assert run["config"]["train"]["kernels"] == "auto"  # what was asked stays the config
    assert run["versions"]["torch"] == torch.__version__ and "numba" in run["versions"]
    assert {"device_uuid", "driver", "matmul_precision", "cuda_graphs"} <= run.keys()


@pytest.mark.parametrize("step", ["compiled", "fused"])  # fused: on a CPU under Triton's interpreter (conftest)
def test_an_explicit_step_whose_probe_fails_ends_in_one_line_and_exit_2(cifar_dir, tmp_path, step):
    assert os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
    proc = _train(cifar_dir, tmp_path / "run", "compile", f"train.kernels={step}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: train.kernels={step} failed its probe"), proc.stderr
    assert not (tmp_path / "run" / "run.json").exists()
