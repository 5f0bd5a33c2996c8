"""What every module of prefit.data shares: the error it raises and the images it returns."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(Exception):
    """Data that cannot be used as asked. Its message is one line for the user: the CLI prints it, exit status 2."""


def data_folder(path: str | os.PathLike[str] | None, layout: str) -> Path:
    """The folder `dataset.path` names, which must exist; `layout` says what it should hold."""
    if path is None or str(path) == "":
        raise DataError(f"no dataset.path given: set dataset.path=DIR, {layout}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"dataset.path={path} {'is not a folder' if folder.exists() else 'does not exist'}")
    return folder


@dataclass
class ImageSet:
    """A split's images with their labels, in file order."""

    images: np.ndarray  # uint8 [N, side, side, 3], HWC
    labels: np.ndarray  # int64 [N], 0..len(label_names)-1
    label_names: list[str]
    source: str  # human-readable: folder and split

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def side(self) -> int:
        """Pixels a side of every image."""
        return int(self.images.shape[1])
