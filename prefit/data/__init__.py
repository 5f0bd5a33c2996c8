"""Data: images, labels and the triples of the study.

Modules: base (DataError, ImageSet), tensors (coordinates, signals in [-1, 1]), pickles (the restricted
unpickler), cifar (CIFAR-layout folders, ciFAIR-10), image_dir (folders of class sub-folders), tiles (such a folder
from scikit-image's photographs, `python -m prefit.data`), triples (the triples and pools).
"""

from __future__ import annotations

from typing import Any

from prefit.choices import IMAGE_DIR_SIDE
from prefit.data import cifar
from prefit.data.base import DataError, ImageSet
from prefit.data.cifar import default_data_root, fetch_cifair10, read_cifar_dir
from prefit.data.image_dir import read_image_dir
from prefit.data.pickles import safe_load
from prefit.data.tensors import SIDE, coordinate_grid, side_of, to_signal, to_uint8
from prefit.data.triples import Triple, draw_pool, draw_triples, max_triples


def load_images(cfg: Any) -> ImageSet:
    """The images a dataset config names (a `DatasetConfig` or its DictConfig; no resolution field: None)."""
    name = str(cfg.name)
    resolution = getattr(cfg, "resolution", None)
    if name == "image_dir":
        return read_image_dir(cfg.path, IMAGE_DIR_SIDE if resolution is None else resolution)
    if name in ("cifair10", "cifar_dir") and resolution is not None and resolution != SIDE:
        raise DataError(
            f"CIFAR images are {SIDE}x{SIDE}: dataset.resolution applies to dataset=image_dir only, "
            f"got dataset.resolution={resolution} with dataset={name}"
        )
    if name == "cifair10":
        folder = fetch_cifair10(cfg.root, cfg.url)
        images = read_cifar_dir(folder, cfg.split)
        images.source = f"ciFAIR-10 at {folder} ({cfg.split} split)"
        return images
    if name == "cifar_dir":
        return read_cifar_dir(cfg.path, cfg.split)
    raise DataError(f"dataset must be image_dir, cifair10 or cifar_dir, got {name!r}")
