"""A folder with one sub-folder per class (torchvision's ImageFolder layout: folder/cat/a.png ...), read at one
resolution: classes and files in sorted name order (names starting with '.' ignored), each image RGB,
centre-cropped to a square and resized with Pillow's Lanczos filter."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from prefit.data.base import DataError, ImageSet, data_folder

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")  # compared lower-cased
MIN_RESOLUTION, MAX_RESOLUTION = 2, 4096
_LAYOUT = "a folder with one sub-folder of PNG or JPEG files per class"


def _visible(folder: Path) -> list[os.DirEntry[str]]:
    """The entries of `folder` not starting with '.', in sorted name order."""
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _class_files(folder: Path) -> tuple[list[str], list[list[Path]]]:
    """The class names and each class's image files, with every layout error as one DataError."""
    entries = _visible(folder)
    classes = [e for e in entries if e.is_dir()]
    if not classes:
        loose = sum(1 for e in entries if e.is_file())
        detail = f" ({loose} files lie directly in it)" if loose else " (it is empty)"
        raise DataError(f"{folder} has no class sub-folders{detail}: image_dir needs {_LAYOUT}")
    names, files = [], []
    for entry in classes:
        here: list[Path] = []
        for item in _visible(Path(entry.path)):
            path = Path(item.path)
            if item.is_dir():
                raise DataError(f"{path} is a folder inside class {entry.name!r}: image_dir reads {_LAYOUT}")
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataError(
                    f"{path} in class {entry.name!r} is not a PNG or JPEG file (.png, .jpg, .jpeg); "
                    "remove it or move it out of the class folder"
                )
            here.append(path)
        if not here:
            raise DataError(f"class {entry.name!r} ({entry.path}) holds no PNG or JPEG files")
        names.append(entry.name)
        files.append(here)
    if len(names) < 2:
        raise DataError(
            f"{folder} has only the class {names[0]!r}: the study's triples need images of at least 2 classes"
        )
    return names, files


def _read_image(path: Path, resolution: int) -> np.ndarray:
    """One file -> uint8 [resolution, resolution, 3]: RGB, centre-cropped square, Lanczos-resized."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "I" or im.mode.startswith("I;16"):  # 16-bit grey PNG: scale to 8 bits
                grey = np.asarray(im, dtype=np.float64) * (255.0 / 65535.0)
                rgb = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8)).convert("RGB")
            else:
                rgb = im.convert("RGB")  # grey, palette, CMYK, RGBA (alpha dropped) -> RGB
    except Exception as e:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ... for bad files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot read the image {path}: {reason}") from e
    width, height = rgb.size
    short = min(width, height)
    left, top = (width - short) // 2, (height - short) // 2
    if (width, height) != (short, short):
        rgb = rgb.crop((left, top, left + short, top + short))
    if short != resolution:
        rgb = rgb.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8)


def read_image_dir(path: str | os.PathLike[str] | None, resolution: int) -> ImageSet:
    """Every image of `path`'s class sub-folders at resolution x resolution, labels in sorted class order."""
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise DataError(f"dataset.resolution must be an integer, got {resolution!r}")
    resolution = int(resolution)
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise DataError(f"dataset.resolution must be in {MIN_RESOLUTION}..{MAX_RESOLUTION}, got {resolution}")
    folder = data_folder(path, _LAYOUT)
    names, files = _class_files(folder)
    total = sum(len(f) for f in files)
    images = np.empty((total, resolution, resolution, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(len(names), dtype=np.int64), [len(f) for f in files])
    for i, file in enumerate(p for class_files in files for p in class_files):
        images[i] = _read_image(file, resolution)
    source = f"{folder} (image_dir, {resolution}x{resolution})"
    return ImageSet(images=images, labels=labels, label_names=names, source=source)
