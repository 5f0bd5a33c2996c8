"""Data: images, labels and the triples of the study.

The images come either from the official ciFAIR-10 archive (downloaded once with pooch, md5-checked, cached)
or from any folder in the CIFAR-10 "python version" layout. Batches are pickles, so they are read with a
restricted unpickler that admits only what those files need: a downloaded or user-supplied file can then
not run code when it is loaded.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import logging
import os
import pickle
import sys
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

try:  # numpy >= 1.26 has numpy._core (numpy 2 pickles name it); older ones only numpy.core
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy < 1.26
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

if TYPE_CHECKING:
    from prefit.config import DatasetConfig

SIDE = 32
N_CLASSES = 10
ROW = 3 * SIDE * SIDE  # one CIFAR image: the R plane, then G, then B, each 32x32 row-major

log = logging.getLogger(__name__)

ARCHIVE_NAME = "ciFAIR-10.zip"
ARCHIVE_FOLDER = "ciFAIR-10"  # what the archive unpacks to
ARCHIVE_MD5 = "ca08fd390f0839693d3fc45c4e49585f"
# The training batches are CIFAR-10's own; test_batch is ciFAIR-10's (near-duplicates replaced), so its md5
# differs from CIFAR-10's test_batch.
FILE_MD5S: dict[str, str] = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "01290e6b622a1977a000eff13650aca2",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
META_FILE = "batches.meta"


class DataError(Exception):
    """Data that cannot be used as asked. Its message is one line for the user: the CLI prints it, exits 1."""


# --------------------------------------------------------------------------------------------- tensors


def coordinate_grid(side: int = SIDE) -> torch.Tensor:
    """Pixel coordinates, float32 [side*side, 2]: linspace(-1, 1) per axis, row-major, row index first."""
    axis = torch.linspace(-1.0, 1.0, side)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)


def to_signal(images: np.ndarray) -> torch.Tensor:
    """uint8 images [N, H, W, 3] -> float32 [N, H*W, 3] in [-1, 1] (x / 127.5 - 1).

    Pixel k of the flattened image is at grid point k of coordinate_grid.
    """
    x = torch.as_tensor(np.ascontiguousarray(images)).to(torch.float32)
    return (x / 127.5 - 1.0).reshape(x.shape[0], -1, 3)


def to_uint8(signal: torch.Tensor | np.ndarray, side: int = SIDE) -> np.ndarray:
    """float [..., H*W, 3] in [-1, 1] -> uint8 [..., H, W, 3], rounded and clipped."""
    x = np.asarray(signal.detach().cpu() if isinstance(signal, torch.Tensor) else signal, dtype=np.float32)
    x = np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return x.reshape(*x.shape[:-2], side, side, 3)


# ------------------------------------------------------------------------------------------ unpickling


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What pickle protocol 2 in Python 3 writes bytes as (`_codecs.encode(s, 'latin1')`), and nothing more:
    other codecs (zlib, bz2, ...) could be used to build decompression bombs."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1")


# (module, name) -> the object. numpy 1 and Python-2 pickles say numpy.core, numpy 2 ones numpy._core;
# both resolve to the current numpy's functions (numpy 2 warns on numpy.core imports).
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytes"): bytes,  # b"" under protocol 2 (an empty array's data)
    ("builtins", "bytes"): bytes,
}
for _ns in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS.update(
        {
            (f"{_ns}.multiarray", "_reconstruct"): _multiarray._reconstruct,  # arrays, pickle protocol <= 4
            (f"{_ns}.multiarray", "scalar"): _multiarray.scalar,  # numpy scalars (e.g. numpy int labels)
            (f"{_ns}.numeric", "_frombuffer"): _numeric._frombuffer,  # arrays, pickle protocol 5
        }
    )


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a CIFAR batch needs: arrays, dtypes, latin-1 bytes."""

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.source}: refusing to unpickle the forbidden global {module}.{name} "
                "(a CIFAR batch holds only arrays, lists, numbers and strings)"
            ) from None


def safe_load(path: str | os.PathLike[str]) -> Any:
    """Unpickle `path` with the restricted unpickler (encoding="bytes": Python-2 strings stay bytes).

    Raises DataError for an unreadable file, a broken pickle, or any global outside the allow-list.
    """
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, str(path)).load()
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    except Exception as e:  # a truncated or non-pickle file raises anything from EOFError to TypeError
        raise DataError(f"{path} is not a readable CIFAR pickle ({type(e).__name__}: {e})") from e


# ------------------------------------------------------------------------------------------ reading


@dataclass
class ImageSet:
    """A split's images with their labels, in file order."""

    images: np.ndarray  # uint8 [N, 32, 32, 3], HWC
    labels: np.ndarray  # int64 [N], 0..9
    label_names: list[str]
    source: str  # human-readable: folder and split

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _str_keys(obj: Any, path: Path) -> dict[str, Any]:
    """A batch dict with its keys as str: Python-2 files have bytes keys, Python-3 ones may have str."""
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not the dict of a CIFAR batch")
    return {_text(k): v for k, v in obj.items()}


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 [N, 3072], int64 [N]), with the checks that make a bad folder fail early."""
    batch = _str_keys(safe_load(path), path)
    for key in ("data", "labels"):
        if key not in batch:
            raise DataError(f"{path} has no '{key}' entry (keys: {sorted(batch)}); not a CIFAR-10 batch")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape N x {ROW}, got {what}")
    try:
        labels = np.asarray(batch["labels"])
    except Exception as e:  # ragged or odd objects
        raise DataError(f"{path}: 'labels' is not a list of integers ({e})") from e
    if data.shape[0] == 0 or (labels.ndim == 1 and labels.size == 0):
        raise DataError(f"{path} holds no images ({data.shape[0]} rows of 'data', {labels.size} labels)")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: 'labels' must be a list of integers, got {labels.dtype} {labels.shape}")
    if labels.shape[0] != data.shape[0]:
        raise DataError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise DataError(f"{path}: labels must be in 0..{N_CLASSES - 1}, found {labels.min()}..{labels.max()}")
    return data, labels.astype(np.int64)


def _read_label_names(path: Path) -> list[str]:
    meta = _str_keys(safe_load(path), path)
    names = meta.get("label_names")
    if not isinstance(names, (list, tuple)) or len(names) != N_CLASSES:
        raise DataError(f"{path}: 'label_names' must list {N_CLASSES} names, got {names!r:.80}")
    return [_text(n) for n in names]


def read_cifar_dir(path: str | os.PathLike[str] | None, split: str) -> ImageSet:
    """Read a folder in the CIFAR-10 python layout.

    split 'train': data_batch_1..5 concatenated in that order; 'test': test_batch. Needs batches.meta too.
    Rows are planar (R, G, B planes of 32x32, row-major) and become HWC images.
    """
    if split not in SPLIT_FILES:
        raise DataError(f"dataset.split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    if path is None or str(path) == "":
        raise DataError("no dataset.path given: set dataset.path=DIR, a folder in the CIFAR-10 python layout")
    folder = Path(path).expanduser()
    if not folder.exists():
        raise DataError(f"dataset.path={path} does not exist")
    if not folder.is_dir():
        raise DataError(f"dataset.path={path} is not a folder")
    needed = (*SPLIT_FILES[split], META_FILE)
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"{folder} lacks {', '.join(missing)}: not a folder in the CIFAR-10 python layout "
            f"(data_batch_1..5, test_batch, batches.meta)"
        )
    label_names = _read_label_names(folder / META_FILE)
    parts = [_read_batch(folder / name) for name in SPLIT_FILES[split]]
    data = np.concatenate([d for d, _ in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([lab for _, lab in parts])
    images = np.ascontiguousarray(data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))
    return ImageSet(images=images, labels=labels, label_names=label_names, source=f"{folder} ({split} split)")


# ------------------------------------------------------------------------------------------ ciFAIR-10


def default_data_root() -> Path:
    """Where ciFAIR-10 is cached: $PREFIT_DATA if set, else the user cache dir (shared by all runs)."""
    env = os.environ.get("PREFIT_DATA")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("prefit")) / "data"


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _bad_files(folder: Path, file_md5s: dict[str, str]) -> list[str]:
    """Names of the expected files that are absent from `folder` or fail their md5."""
    return [n for n, md5 in file_md5s.items() if not (folder / n).is_file() or _md5(folder / n) != md5]


@contextlib.contextmanager
def _quiet_pooch() -> Iterator[None]:
    """pooch logs every download to its own stderr handler; we say what matters ourselves."""
    import pooch

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _download_reason(e: Exception) -> str:
    import requests

    if isinstance(e, requests.exceptions.HTTPError) and e.response is not None:
        return f"HTTP {e.response.status_code}"
    if isinstance(e, requests.exceptions.Timeout):
        return "the connection timed out"
    if isinstance(e, requests.exceptions.ConnectionError):
        return "no connection"
    if isinstance(e, requests.exceptions.ChunkedEncodingError):
        return "the download was cut off"
    return type(e).__name__


def _unpack(archive: Path, folder: Path, names: list[str]) -> None:
    """Extract `ciFAIR-10/<name>` for each name into `folder`, each through a temporary file and an atomic
    rename, so that a crash (or a parallel job) never sees a half-written batch. Other members are ignored."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = set(zf.namelist())
            absent = [n for n in names if f"{ARCHIVE_FOLDER}/{n}" not in members]
            if absent:
                raise DataError(f"{archive} lacks {', '.join(f'{ARCHIVE_FOLDER}/{n}' for n in absent)}")
            for name in names:
                tmp = folder / f".{name}.{os.getpid()}.part"
                try:
                    with zf.open(f"{ARCHIVE_FOLDER}/{name}") as src, open(tmp, "wb") as dst:
                        while chunk := src.read(1 << 20):
                            dst.write(chunk)
                    os.replace(tmp, folder / name)
                finally:
                    tmp.unlink(missing_ok=True)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"cannot unpack {archive}: {e}") from e


def fetch_cifair10(
    root: str | os.PathLike[str] | None,
    url: str,
    *,
    archive_md5: str | None = None,
    file_md5s: dict[str, str] | None = None,
) -> Path:
    """Make sure ciFAIR-10 is unpacked and md5-valid under `root` (None: default_data_root()); return the
    folder that holds the batches (`root/ciFAIR-10`, or `root` itself if the batches lie there directly).

    Valid files present: no network at all. Else the archive `root/ciFAIR-10.zip` is used if present and
    md5-valid, downloaded with pooch if not (the download's md5 is checked before it is kept), and unpacked.
    Corrupt batches are removed before unpacking again. Everything that goes wrong is one DataError.
    `archive_md5` and `file_md5s` (None: the official ARCHIVE_MD5, FILE_MD5S) let tests serve a small archive.
    """
    archive_md5 = ARCHIVE_MD5 if archive_md5 is None else archive_md5
    file_md5s = dict(FILE_MD5S if file_md5s is None else file_md5s)
    base = Path(root).expanduser() if root else default_data_root()
    folder = base / ARCHIVE_FOLDER
    if base.is_dir() and not _bad_files(base, file_md5s):  # someone pointed root at the unpacked folder
        return base
    bad = _bad_files(folder, file_md5s) if folder.is_dir() else list(file_md5s)
    if not bad:
        return folder
    for name in bad:  # corrupt (not merely absent) batches go, so that nothing half-valid is ever read
        if (folder / name).is_file():
            log.warning("%s fails its md5 check; removing it and unpacking it again", folder / name)
            (folder / name).unlink()

    archive = base / ARCHIVE_NAME
    provide = (
        f"put {ARCHIVE_NAME} from {url} into {base} (or set PREFIT_DATA to a folder holding it), "
        f"or use dataset=cifar_dir dataset.path=DIR for a folder in the CIFAR-10 python layout"
    )
    if archive.is_file() and _md5(archive) != archive_md5:
        log.warning("%s fails its md5 check; removing it and downloading it again", archive)
        archive.unlink()
    if not archive.is_file():
        import pooch
        import requests

        log.info("ciFAIR-10 not found in %s: downloading %s", base, url)
        try:
            base.mkdir(parents=True, exist_ok=True)
            with _quiet_pooch():
                pooch.retrieve(
                    url,
                    known_hash=f"md5:{archive_md5}",
                    fname=ARCHIVE_NAME,
                    path=base,
                    progressbar=sys.stderr.isatty(),
                )
        except requests.exceptions.RequestException as e:
            archive.unlink(missing_ok=True)
            raise DataError(
                f"ciFAIR-10 is not in {base} and could not be downloaded from {url} ({_download_reason(e)}): "
                + provide
            ) from e
        except ValueError as e:  # pooch: the downloaded file's hash does not match (it deleted the file)
            archive.unlink(missing_ok=True)
            raise DataError(
                f"the download from {url} was incomplete or corrupt (md5 is not {archive_md5}) and was "
                f"removed; try again, or {provide}"
            ) from e
        except OSError as e:
            raise DataError(f"cannot write ciFAIR-10 into {base}: {e}") from e

    _unpack(archive, folder, bad)
    still_bad = _bad_files(folder, file_md5s)
    if still_bad:
        for name in still_bad:
            (folder / name).unlink(missing_ok=True)
        raise DataError(
            f"{', '.join(still_bad)} unpacked from {archive} fail their md5 check and were removed: "
            f"the archive is not the official ciFAIR-10; delete it, or {provide}"
        )
    return folder


def load_images(cfg: DatasetConfig) -> ImageSet:
    """The images the config names (a DatasetConfig or its DictConfig): the md5-checked ciFAIR-10 (fetched
    into cfg.root if need be) or any CIFAR-layout folder cfg.path; cfg.split picks the split."""
    if cfg.name == "cifair10":
        folder = fetch_cifair10(cfg.root, cfg.url)
        images = read_cifar_dir(folder, cfg.split)
        images.source = f"ciFAIR-10 at {folder} ({cfg.split} split)"
        return images
    if cfg.name == "cifar_dir":
        return read_cifar_dir(cfg.path, cfg.split)
    raise DataError(f"dataset must be cifair10 or cifar_dir, got {cfg.name!r}")


# ------------------------------------------------------------------------------------------ drawing


@dataclass(frozen=True)
class Triple:
    """One row of the study: a target A, an image of A's class and an image of another class."""

    triple: int  # 0..n-1
    target: int  # index of A in the ImageSet
    same: int  # another image of A's class
    other: int  # an image of another class


def max_triples(labels: np.ndarray) -> int:
    """The most triples with all images distinct that these labels allow.

    With t_c triples whose A is of class c and o_c other-class images taken from c, a run of T triples exists
    iff 2 t_c + o_c <= n_c, t_c + o_c <= T (A's class cannot supply its own other image), sum t = sum o = T.
    For a given T the t_c that leave the most room for o are found greedily (the room is concave in t_c).
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=1)

    def feasible(total: int) -> bool:
        pairs = counts // 2
        if pairs.sum() < total:
            return False
        room = np.minimum(counts, total)  # o_c with t_c = 0
        cheap = np.clip(counts - total, 0, pairs)  # t_c units that cost o_c one each; the rest cost two
        used_cheap = min(total, int(cheap.sum()))
        return int(room.sum()) - used_cheap - 2 * (total - used_cheap) >= total

    lo, hi = 0, int(counts.sum()) // 3
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if feasible(mid) else (lo, mid - 1)
    return lo


def draw_triples(labels: np.ndarray, n: int, seed: int) -> list[Triple]:
    """Draw n triples in which no image appears twice (no A, same-class or other-class image repeats).

    Walk one permutation of all images (np.random.default_rng(seed)); each unused image whose class still
    has another unused image becomes an A; its same-class image is the next unused image of its class in
    that permutation; the other class is drawn uniformly among the other classes with unused images, and
    its next unused image is taken. Nothing depends on n, so the first k triples are the same for any n >= k.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if n < 0:
        raise DataError(f"the number of triples must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(labels.shape[0])
    classes = np.unique(labels)
    queues = {int(c): order[labels[order] == c].tolist() for c in classes}  # each class, in walk order
    heads = dict.fromkeys(queues, 0)
    left = {c: len(q) for c, q in queues.items()}
    used = np.zeros(labels.shape[0], dtype=bool)

    def take(c: int) -> int:
        q = queues[c]
        while used[q[heads[c]]]:
            heads[c] += 1
        i = q[heads[c]]
        used[i] = True
        left[c] -= 1
        return i

    triples: list[Triple] = []
    walk = iter(order)
    while len(triples) < n:
        a = next((int(i) for i in walk if not used[i] and left[int(labels[i])] >= 2), None)
        if a is None:
            break
        c = int(labels[a])
        others = [k for k in queues if k != c and left[k] > 0]
        if not others:
            break
        used[a] = True
        left[c] -= 1
        same = take(c)
        other = take(others[int(rng.integers(len(others)))])
        triples.append(Triple(triple=len(triples), target=a, same=same, other=other))
    if len(triples) < n:
        most = max_triples(labels)
        counts = ", ".join(str(int(k)) for k in np.bincount(labels, minlength=N_CLASSES))
        detail = f" (this seed's draw stopped at {len(triples)})" if len(triples) < most else ""
        raise DataError(
            f"asked for {n} triples but {labels.shape[0]} images (per class: {counts}) allow at most {most} "
            f"with no image used twice{detail}; lower dataset.n_triples"
        )
    return triples


def draw_pool(labels: np.ndarray, n: int, seed: int, exclude: Iterable[int] = ()) -> np.ndarray:
    """n distinct image indices (int64, shuffled), none in `exclude`, as balanced over classes as the
    remaining images allow; deterministic given (labels, n, seed, exclude). For pools (e.g. meta-learning)
    that must not see the triples' images."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    excluded = np.zeros(labels.shape[0], dtype=bool)
    drop = np.fromiter((int(i) for i in exclude), dtype=np.int64)
    if drop.size and (drop.min() < 0 or drop.max() >= labels.shape[0]):
        raise DataError(f"draw_pool: exclude holds indices outside 0..{labels.shape[0] - 1}")
    excluded[drop] = True
    free = np.flatnonzero(~excluded)
    if n < 0 or n > free.size:
        raise DataError(f"asked for a pool of {n} images but only {free.size} images are outside the triples")
    by_class = [rng.permutation(free[labels[free] == c]) for c in np.unique(labels[free])]
    quota = np.zeros(len(by_class), dtype=np.int64)
    room = np.array([len(x) for x in by_class], dtype=np.int64)
    while quota.sum() < n:  # fill level by level; the classes that get one more at the last level are drawn
        open_ = np.flatnonzero(quota < room)
        need = n - int(quota.sum())
        if need < open_.size:
            open_ = rng.choice(open_, size=need, replace=False)
        quota[open_] += 1
    picked = np.concatenate([x[:q] for x, q in zip(by_class, quota, strict=True)]) if by_class else free[:0]
    return rng.permutation(picked).astype(np.int64)
