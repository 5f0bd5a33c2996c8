"""A real image_dir without the internet: photographs shipped inside scikit-image, cut into tiles.

Each photograph is one class: OUT/<photo>/<photo>_r<row>_c<col>.png for every non-overlapping size x size tile
on a regular grid from its top-left corner (a remainder at the right and bottom edges is dropped). Row and
column are zero-padded to the same width within a photograph, so sorted file names are row-major order.
The tiles are exact crops of the source photograph; dataset.resolution resizes them when the folder is loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefit.data.base import DataError

MARKER = ".prefit-tiles"  # written into every build; --overwrite replaces only folders that hold it
INSTALL = "pip install scikit-image (or the project's extra: pip install -e '.[tiles]')"


def _loader(name: str, view: int | None = None) -> Callable[[Any], np.ndarray]:
    """skimage.data's `name`, or its `view`-th image (the stereo pair)."""
    return lambda data: getattr(data, name)() if view is None else getattr(data, name)()[view]


# Colour photographs whose files are inside the scikit-image wheel (skimage/data/), so loading them needs no
# network. name -> loader(skimage.data).
PHOTOS: dict[str, Callable[[Any], np.ndarray]] = {
    "astronaut": _loader("astronaut"),  # 512x512, Eileen Collins (NASA)
    "coffee": _loader("coffee"),  # 400x600, a cup of coffee
    "chelsea": _loader("chelsea"),  # 300x451, a cat
    "rocket": _loader("rocket"),  # 427x640, a launch (NASA)
    "motorcycle_left": _loader("stereo_motorcycle", 0),  # 500x741, the left view of the stereo pair
    "hubble_deep_field": _loader("hubble_deep_field"),  # 872x1000, galaxies (NASA)
    "retina": _loader("retina"),  # 1411x1411, a fundus photograph (its corners are black)
    "immunohistochemistry": _loader("immunohistochemistry"),  # 512x512, stained tissue
    "motorcycle_right": _loader("stereo_motorcycle", 1),  # nearly the same scene as motorcycle_left
}
# The defaults leave out photographs mostly of one flat colour (retina's black corners, the Hubble field's dark sky),
# whose many trivial tiles would be most of the triples, and motorcycle_right (motorcycle_left's scene again).
NOT_DEFAULT = ("hubble_deep_field", "retina", "motorcycle_right")
DEFAULT_PHOTOS: tuple[str, ...] = tuple(name for name in PHOTOS if name not in NOT_DEFAULT)


def load_photo(name: str) -> np.ndarray:
    """The photograph `name` (one of PHOTOS) as uint8 [H, W, 3]."""
    if name not in PHOTOS:
        raise DataError(f"unknown photograph {name!r}; choose from {', '.join(PHOTOS)}")
    try:
        import skimage.data
    except ImportError as e:
        raise DataError(f"building tiles needs scikit-image, which is not installed: {INSTALL}") from e
    try:
        photo = np.asarray(PHOTOS[name](skimage.data))
    except Exception as e:  # e.g. a scikit-image release that no longer ships the file and tries to download it
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"scikit-image could not load the photograph {name}: {reason}") from e
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
        raise DataError(f"skimage.data's {name} is {photo.dtype} {photo.shape}, not an RGB uint8 photograph")
    return photo


def tile_grid(shape: Sequence[int], size: int) -> tuple[int, int]:
    """(rows, cols) of whole size x size tiles in an image of shape (H, W, ...)."""
    return int(shape[0]) // size, int(shape[1]) // size


def _check_out(out: Path, overwrite: bool) -> bool:
    """Whether `out` holds something to replace; raise if it may not be replaced."""
    if not out.exists() and not out.is_symlink():
        return False
    if out.is_symlink() or not out.is_dir():
        raise DataError(f"{out} exists and is not a folder; choose another OUT")
    if not any(out.iterdir()):
        return False
    if not overwrite:
        raise DataError(f"{out} exists and is not empty; pass --overwrite (overwrite=True) to replace it")
    if not (out / MARKER).is_file():
        raise DataError(
            f"{out} was not made by build-tiles (it has no {MARKER} file), so --overwrite will not delete it; "
            "remove it yourself or choose another OUT"
        )
    return True


def build_tiles(
    out: str | os.PathLike[str],
    size: int = 64,
    photos: Sequence[str] | None = None,
    overwrite: bool = False,
    *,
    echo: Callable[[str], Any] | None = None,
) -> dict[str, int]:
    """Cut each photograph (None: DEFAULT_PHOTOS) into size x size tiles under `out`, one class folder each; return
    {photo: tiles}. Built under a temporary name and renamed when complete, so an existing `out` is replaced (with
    `overwrite`, and only if a build made it) only by a whole one. `echo` gets a line per class; errors: DataError."""
    names = list(DEFAULT_PHOTOS if photos is None else photos)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 2:
        raise DataError(f"the tile size must be an integer >= 2, got {size!r}")
    size = int(size)
    if not names:
        raise DataError("no photographs given")
    unknown = [n for n in names if n not in PHOTOS]
    if unknown:
        raise DataError(f"unknown photograph(s) {', '.join(unknown)}; choose from {', '.join(PHOTOS)}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"photograph(s) named twice: {', '.join(twice)}")
    out = Path(os.path.abspath(Path(out).expanduser()))  # '.' and '..' resolved, symlinks not
    replace = _check_out(out, overwrite)
    loaded = {name: load_photo(name) for name in names}
    small = [f"{n} ({p.shape[0]}x{p.shape[1]})" for n, p in loaded.items() if min(tile_grid(p.shape, size)) == 0]
    if small:
        raise DataError(f"--size {size} is larger than a side of {', '.join(small)}: no tile would fit")

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part"  # beside out: rename is atomic
        tmp.mkdir()
    except OSError as e:
        raise DataError(f"cannot create a folder beside {out}: {e}") from e
    counts: dict[str, int] = {}
    try:
        for name, photo in loaded.items():
            counts[name] = _write_tiles(photo, size, tmp / name, name)
            if echo is not None:
                (height, wide), (rows, cols) = photo.shape[:2], tile_grid(photo.shape, size)
                echo(f"{name}: {counts[name]} tiles ({height}x{wide} -> {rows} rows x {cols} columns of {size}x{size})")
        (tmp / MARKER).write_text(json.dumps({"size": size, "tiles": counts}, indent=1) + "\n")
        _move_into_place(tmp, out, replace)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot write the tiles for {out}: {e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


def _write_tiles(photo: np.ndarray, size: int, folder: Path, name: str) -> int:
    """Save every whole size x size tile of `photo` as folder/<name>_r<row>_c<col>.png; return how many."""
    from PIL import Image

    rows, cols = tile_grid(photo.shape, size)
    width = len(str(max(rows, cols) - 1))
    folder.mkdir()
    for r in range(rows):
        for c in range(cols):
            tile = np.ascontiguousarray(photo[r * size : (r + 1) * size, c * size : (c + 1) * size])
            Image.fromarray(tile).save(folder / f"{name}_r{r:0{width}d}_c{c:0{width}d}.png")
    return rows * cols


def _move_into_place(tmp: Path, out: Path, replace: bool) -> None:
    """Rename the complete build `tmp` to `out`; an old `out` is moved aside first and deleted after."""
    old = None
    try:
        if replace:
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
        elif out.is_dir():  # empty: rename(2) replaces an empty folder, but say it plainly
            out.rmdir()
        os.replace(tmp, out)
    except OSError as e:
        if old is not None and (old / out.name).exists() and not out.exists():
            os.replace(old / out.name, out)  # put the old build back
        raise DataError(f"cannot move the new tiles into {out}: {e}") from e
    finally:
        if old is not None and out.exists():  # the old build is deleted only once something is in its place
            shutil.rmtree(old, ignore_errors=True)
