"""Data: images, labels and the triples of the study.

The images come from the official ciFAIR-10 archive (downloaded once, md5-checked, cached), from any folder in
the CIFAR-10 "python version" layout, or from any folder of class sub-folders of PNG/JPEG files (image_dir),
resized to a chosen resolution. One module per concern:

- base: DataError and ImageSet, shared by all;
- tensors: the coordinate grid, images as signals in [-1, 1] and back;
- pickles: the restricted unpickler CIFAR batches are read with;
- cifar: reading CIFAR-layout folders and fetching ciFAIR-10;
- image_dir: reading a folder of class sub-folders of images;
- tiles: building such a folder from photographs shipped with scikit-image (`python -m prefit.data`);
- triples: drawing the triples and the pools.
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
    """The images a dataset config names (`prefit.config.DatasetConfig` or its DictConfig, read by attribute; a config
    without a resolution field reads as resolution None)."""
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
