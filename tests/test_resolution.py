"""Resolution plumbing: every part takes the image side from the data, and CIFAR's 32x32 results do not move.

The golden file `tests/golden/cifar_tiny.npz` holds the PSNR trajectories and reconstructions of one fixed
tiny config (the synthetic CIFAR folder of conftest, 1x8 SIRENs, 3 triples, 20 epochs, both engines), written
by the code before images of other sizes existed. Its rows must come out the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from images import smooth_images
from omegaconf import OmegaConf

from prefit import bench
from prefit import train as app
from prefit.config import TrainConfig
from prefit.data import coordinate_grid
from prefit.engine import auto_max_members, cuda_bytes_per_member, fit_batched, fit_sequential, psnr_from_loss
from prefit.model import SIREN, init_params, n_weights, stack_params, triple_generator

CONF = Path(app.__file__).resolve().parents[1] / "conf"
GOLDEN = Path(__file__).parent / "golden" / "cifar_tiny.npz"
CPU = torch.device("cpu")


def run_cell(tmp_path: Path, name: str, *overrides: str) -> Path:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "train.threads=1", "train.progress=false"])
    out = tmp_path / name
    app.run(OmegaConf.to_object(cfg), out)
    return out


@pytest.mark.parametrize("engine", ["batched", "sequential"])
def test_cifar_results_of_a_fixed_config_are_unchanged(engine, cifar_dir, tmp_path):
    out = run_cell(
        tmp_path,
        engine,
        "dataset=cifar_dir",
        f"dataset.path={cifar_dir}",
        "model.hls=1",
        "model.hfs=8",
        "train.epochs=20",
        "dataset.n_triples=3",
        f"train.engine={engine}",
    )
    golden = np.load(GOLDEN)
    rows = pd.read_parquet(out / "psnr.parquet")
    keys = rows[["stage", "triple", "epoch", "target_index", "target_label"]].to_numpy()
    np.testing.assert_array_equal(keys, golden[f"{engine}_keys"])
    np.testing.assert_array_equal(rows["scheme"].astype(str).to_numpy(), golden[f"{engine}_scheme"])
    np.testing.assert_allclose(rows["psnr"].to_numpy(), golden[f"{engine}_psnr"], rtol=1e-5, atol=0)
    recon = np.load(out / "recon.npz")
    assert recon["recon"].shape == golden[f"{engine}_recon"].shape == (9, 2, 32, 32, 3)
    assert np.abs(recon["recon"].astype(int) - golden[f"{engine}_recon"]).max() <= 1  # uint8 rounding at most


def members(n: int, hls: int = 2, hfs: int = 16):
    return stack_params([init_params(hls, hfs, 30.0, triple_generator(7, i)) for i in range(n)])


@pytest.mark.parametrize("side", [16, 48])
def test_both_engines_fit_the_same_at_other_resolutions(side):
    train = TrainConfig(epochs=25, lr=1e-3, snapshot_epochs=[0, -1], progress=False)
    params, targets = members(3), smooth_images(3, side=side)
    coords = coordinate_grid(side)
    batched = fit_batched(params, targets, coords, train, SIREN, CPU, max_members=2)
    sequential = fit_sequential(params, targets, coords, train, SIREN, CPU)
    assert batched.snapshots.shape == sequential.snapshots.shape == (3, 2, side * side, 3)
    gap = (psnr_from_loss(batched.loss) - psnr_from_loss(sequential.loss)).abs().max().item()
    assert gap < 1e-3, gap
    assert (psnr_from_loss(batched.loss[:, -1]) > psnr_from_loss(batched.loss[:, 0]) + 1).all()  # real fits
    # the snapshot of the last epoch is the prediction behind its loss: a wrong grid or reshape breaks this
    mse = ((batched.snapshots[:, -1] - targets) ** 2).mean(dim=(1, 2))
    torch.testing.assert_close(mse, batched.loss[:, -1], rtol=1e-3, atol=0)


def test_memory_estimates_grow_with_pixels():
    small, large = cuda_bytes_per_member(3, 64, 32 * 32), cuda_bytes_per_member(3, 64, 128 * 128)
    assert large > 10 * small
    assert auto_max_members(3, 64, CPU, 512 * 512) < auto_max_members(3, 64, CPU, 32 * 32)


def test_bench_counts_flops_at_the_asked_resolution(tmp_path):
    opts = bench.parse_args(["--quick", "--resolution", "16", "--cells", "1x8", "--engines", "batched"])
    assert opts.resolution == 16
    opts.out = tmp_path / "bench.json"
    result = bench.run_bench(opts)
    cell = result["cells"][0]
    assert cell["resolution"] == 16 and result["settings"]["resolution"] == 16
    assert cell["flops_per_member_epoch"] == 6 * 16 * 16 * n_weights(1, 8)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Three classes of four smooth 40x30 PNGs: centre-cropped and resized by the loader."""
    from PIL import Image

    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:30, 0:40] / 30.0
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(4):
            f = rng.uniform(1, 4, size=3)
            rgb = np.stack([np.sin(f[k] * (xx + yy + k)) for k in range(3)], axis=-1)
            Image.fromarray(np.uint8(127.5 * (rgb + 1))).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.mark.parametrize("side", [16, 48])
def test_an_image_folder_runs_through_both_engines_at_its_resolution(side, image_folder, tmp_path):
    common = [
        "dataset=image_dir",
        f"dataset.path={image_folder}",
        f"dataset.resolution={side}",
        "model.hls=1",
        "model.hfs=8",
        "train.epochs=15",
        "train.lr=1e-3",
        "dataset.n_triples=2",
    ]
    runs = {e: run_cell(tmp_path, e, *common, f"train.engine={e}") for e in ("batched", "sequential")}
    rows = {e: pd.read_parquet(out / "psnr.parquet") for e, out in runs.items()}
    assert len(rows["batched"]) == len(rows["sequential"]) == 2 * 5 * 15  # triples x fits x epochs
    gap = np.abs(rows["batched"]["psnr"].to_numpy() - rows["sequential"]["psnr"].to_numpy()).max()
    assert gap < 1e-3, gap
    for out in runs.values():
        recon = np.load(out / "recon.npz")
        assert recon["recon"].shape[-3:] == recon["triple_images"].shape[-3:] == (side, side, 3)
        record = json.loads((out / "run.json").read_text())
        assert record["resolution"] == side and record["study"]["dataset"]["resolution"] == side
