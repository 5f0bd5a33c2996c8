"""CIFAR-10 in its "python version" layout: reading such a folder (its pickles with prefit.data.pickles' restricted
unpickler), and fetching the official ciFAIR-10 (downloaded once with pooch, md5-checked, cached)."""

from __future__ import annotations

import logging
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from prefit.data.base import DataError, ImageSet, data_folder
from prefit.data.pickles import safe_load
from prefit.data.tensors import SIDE
from prefit.io import file_hash

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
    """A CIFAR-10 python-layout folder's split ('train': data_batch_1..5, 'test': test_batch), as HWC images."""
    if split not in SPLIT_FILES:
        raise DataError(f"dataset.split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    folder = data_folder(path, "a folder in the CIFAR-10 python layout")
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


def default_data_root() -> Path:
    """Where ciFAIR-10 is cached: $PREFIT_DATA if set, else the user cache dir (shared by all runs)."""
    env = os.environ.get("PREFIT_DATA")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("prefit")) / "data"


def _bad_files(folder: Path, file_md5s: dict[str, str]) -> list[str]:
    """Names of the expected files that are absent from `folder` or fail their md5."""
    return [n for n, md5 in file_md5s.items() if not (folder / n).is_file() or file_hash(folder / n, "md5") != md5]


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
    """Extract `ciFAIR-10/<name>` into `folder` for each name, through a temporary file renamed when whole."""
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
    """Make sure ciFAIR-10 is unpacked and md5-valid under `root` (None: default_data_root()), downloading it only where
    neither valid batches nor a valid archive are there; return the folder that holds the batches. Every failure is
    one DataError. `archive_md5` and `file_md5s` (None: the official ones) let tests serve a small archive."""
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
    if archive.is_file() and file_hash(archive, "md5") != archive_md5:
        log.warning("%s fails its md5 check; removing it and downloading it again", archive)
        archive.unlink()
    if not archive.is_file():
        import pooch
        import requests

        log.info("ciFAIR-10 not found in %s: downloading %s", base, url)
        quiet = pooch.get_logger()  # pooch logs every download on its own; we say what matters ourselves
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            base.mkdir(parents=True, exist_ok=True)
            pooch.retrieve(
                url, known_hash=f"md5:{archive_md5}", fname=ARCHIVE_NAME, path=base, progressbar=sys.stderr.isatty()
            )
        except requests.exceptions.RequestException as e:
            archive.unlink(missing_ok=True)
            raise DataError(
                f"ciFAIR-10 is not in {base} and could not be downloaded from {url} ({_download_reason(e)}): " + provide
            ) from e
        except ValueError as e:  # pooch: the downloaded file's hash does not match (it deleted the file)
            archive.unlink(missing_ok=True)
            raise DataError(
                f"the download from {url} was incomplete or corrupt (md5 is not {archive_md5}) and was "
                f"removed; try again, or {provide}"
            ) from e
        except OSError as e:
            raise DataError(f"cannot write ciFAIR-10 into {base}: {e}") from e
        finally:
            quiet.setLevel(level)

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
