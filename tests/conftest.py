"""Shared fixtures: a tiny synthetic CIFAR-layout folder, and the real-image sample when ../shared has it."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 1.26
    from numpy.core.multiarray import _reconstruct

# Without a GPU, Triton's kernels (prefit.fused) run under its interpreter on CPU tensors: set before any
# test imports them. With a GPU they are compiled, and tests/test_cuda.py runs them for real.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Caches (probe verdicts, meta-initialisations) go to a folder of this test run, not the user's: set before any
# test runs, so the subprocesses the tests start inherit it.
os.environ["PREFIT_CACHE"] = tempfile.mkdtemp(prefix="prefit-test-cache-")

REPO = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = REPO.parent / "shared" / "data" / "cifar10-jpeg-sample"
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MARK = (3, 5, (11, 22, 33))  # row, column, RGB of image 0 of data_batch_1 in every synthetic folder


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler, whose opcodes can be chosen
    """Writes what Python 2 wrote: byte strings as str opcodes, arrays via numpy.core.multiarray."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_str8(self, obj: bytes) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_str8

    def save_global(self, obj, name=None):
        if obj is _reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def dump_batch(obj: object, path: Path, style: str) -> None:
    """Pickle `obj` as the official files are: 'py2' (Python 2) or 'py3' (Python 3 + numpy 2, protocol 2)."""
    with open(path, "wb") as f:
        if style == "py2":
            _Py2Pickler(f, protocol=2).dump(obj)
        else:
            pickle.dump(obj, f, protocol=2)


def write_cifar_dir(folder: Path, per_batch: int = 10, style: str = "mixed", seed: int = 0) -> Path:
    """A CIFAR-10 python-layout folder of random images: 5 training batches and a test batch of
    `per_batch` images each, labels (j + batch) % 10 (balanced). style: py2, py3 or mixed (like the shared
    sample: meta and training batches py2, test batch py3). Image 0 of data_batch_1 has the pixel MARK."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_style = "py3" if style == "py3" else "py2"
    test_style = "py2" if style == "py2" else "py3"
    meta = {b"label_names": [n.encode() for n in LABEL_NAMES], b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    dump_batch(meta, folder / "batches.meta", train_style)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        if b == 0:
            row, col, rgb = MARK
            for channel, value in enumerate(rgb):
                data[0, channel * 1024 + row * 32 + col] = value
        batch = {
            b"batch_label": f"{name} (synthetic)".encode(),
            b"labels": [(j + b) % 10 for j in range(per_batch)],
            b"data": data,
            b"filenames": [f"img_{b}_{j}.png".encode() for j in range(per_batch)],
        }
        dump_batch(batch, folder / name, test_style if name == "test_batch" else train_style)
    return folder


@pytest.fixture
def make_cifar_dir(tmp_path: Path) -> Callable[..., Path]:
    """Factory: make_cifar_dir(name="cifar", per_batch=10, style="mixed", seed=0) -> folder in tmp_path."""

    def make(name: str = "cifar", per_batch: int = 10, style: str = "mixed", seed: int = 0) -> Path:
        return write_cifar_dir(tmp_path / name, per_batch=per_batch, style=style, seed=seed)

    return make


@pytest.fixture
def cifar_dir(make_cifar_dir: Callable[..., Path]) -> Path:
    """A tiny CIFAR-layout folder: 50 training images, 10 test images, both pickle styles."""
    return make_cifar_dir()


@pytest.fixture
def shared_sample() -> Path:
    """The real-image sample (5000 train / 1000 test), present in CI and on developers' machines only."""
    if not (SHARED_SAMPLE / "batches.meta").is_file():
        pytest.skip(f"real-image sample {SHARED_SAMPLE} is absent (../shared is not part of a fresh clone)")
    return SHARED_SAMPLE


def run_smoke_sweep(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """`python -m prefit.train -m` of the smoke preset, a 1x8 SIREN, on the CIFAR-layout folder `data` into `out`:
    one job at a time, one thread each (on a busy machine two contend for seconds). Fails the test on an error."""
    command = [
        *(sys.executable, "-m", "prefit.train", "-m", "+experiment=smoke", "model.hls=1", "model.hfs=8"),
        *("dataset=cifar_dir", f"dataset.path={data}", f"hydra.sweep.dir={out}", "hydra.launcher.n_jobs=1"),
        *("train.progress=false", "train.threads=1", *extra),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc
