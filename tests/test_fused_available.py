"""Where the fused kernels run (prefit.fused.unavailable), and the one line a user gets where they cannot.

Kept apart from tests/test_fused.py, which skips as a whole where the kernels cannot run.
"""

import numpy
import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (it is on Linux x86-64)")

from prefit import fused  # noqa: E402
from prefit.config import ConfigError  # noqa: E402
from prefit.engine.batched import resolve_kernels  # noqa: E402

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("triton_version", "numpy_version", "runs"),
    [
        ("3.6.0", "2.4.6", False),
        ("3.6.0", "2.3.5", True),
        ("3.7.0", "2.4.6", True),
        ("3.10.1", "2.5.0", True),
        ("3.6.0", "2.10.0rc1", False),
    ],
)
def test_the_interpreter_is_refused_where_its_triton_cannot_run_with_this_numpy(
    monkeypatch, triton_version, numpy_version, runs
):
    monkeypatch.setattr(fused, "INTERPRET", True)
    monkeypatch.setattr(fused.triton, "__version__", triton_version)
    monkeypatch.setattr(numpy, "__version__", numpy_version)
    why = fused.unavailable(CPU)
    assert (why is None) == runs and fused.available(CPU) == runs
    if not runs:
        assert why == f"Triton {triton_version}'s interpreter fails with numpy {numpy_version} (Triton 3.7 runs)"


def test_compiled_kernels_run_on_cuda_only_and_interpreted_ones_on_a_cpu_only(monkeypatch):
    monkeypatch.setattr(fused, "INTERPRET", False)
    assert fused.unavailable(CUDA) is None
    needs = "they need a GPU (compiled) or a CPU with TRITON_INTERPRET=1 (interpreted)"
    assert fused.unavailable(CPU) == f"{needs}, not cpu"
    monkeypatch.setattr(fused, "INTERPRET", True)
    assert "not cuda with TRITON_INTERPRET=1" in fused.unavailable(CUDA)
    monkeypatch.setattr(fused, "triton", None)
    assert fused.unavailable(CUDA) == "Triton is not installed (it is on Linux x86-64)"


def test_asking_for_fused_kernels_where_they_cannot_run_is_one_config_error_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(fused, "INTERPRET", False)
    with pytest.raises(ConfigError, match=r"^train.kernels=fused cannot run here: they need a GPU .* not cpu$"):
        resolve_kernels("fused", CPU)
    assert resolve_kernels("auto", CPU) == "compiled"
    monkeypatch.setattr(fused, "triton", None)
    assert resolve_kernels("auto", CUDA) == "torch"
