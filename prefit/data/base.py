"""What every module of prefit.data shares: the error it raises and the images it returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DataError(Exception):
    """Data that cannot be used as asked. Its message is one line for the user: the CLI prints it, exit status 2."""


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
