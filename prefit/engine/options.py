"""The engine's own options for a fit, free of Hydra; `prefit.config.TrainConfig` extends them with how a job runs,
so a composed config passes as it is."""

from __future__ import annotations

from dataclasses import dataclass, field

from prefit.choices import Kernels, MatmulPrecision
from prefit.keys import ARITHMETIC, RUNTIME, RUNTIME_ARITHMETIC


@dataclass
class FitOptions:
    """How each fit runs (identical for pre-fits and fits)."""

    epochs: int = 2000
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    plateau_patience: int = 500
    plateau_factor: float = 0.5
    plateau_threshold: float = 1e-4
    progress: bool = field(default=True, metadata=RUNTIME)
    snapshot_epochs: list[int] = field(default_factory=lambda: [0, 100, 500, -1])  # -1: the last epoch
    # highest (fp32) | 3xtf32 (fp32-accurate on tensor cores) | high (TF32)
    matmul_precision: MatmulPrecision = field(default=MatmulPrecision.highest, metadata=ARITHMETIC)
    # the batched step: auto | compiled (numba, CPU) | fused (Triton; CUDA) | torch (plain torch ops)
    kernels: Kernels = field(default=Kernels.auto, metadata=RUNTIME_ARITHMETIC)
    # compile the generic step (other families; the shared-encoder pre-fit) with torch.compile on a CPU; false: eager
    compile_generic: bool = field(default=True, metadata=RUNTIME_ARITHMETIC)
    # replay captured epochs on CUDA (the same numbers as eager, fewer launches)
    cuda_graphs: bool = field(default=True, metadata=RUNTIME_ARITHMETIC)
