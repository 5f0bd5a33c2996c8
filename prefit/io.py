"""Files written atomically (a reader, or a resumed sweep, sees a complete file or none), the user cache, and whether
the process named in a record of a file it holds (a GPU lease, a cell's claim) still runs."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, on failure remove it. The file gets
    `mode` exactly if given, else the usual permissions (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    mask = os.umask(0)  # read by setting it, then put back
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask if mode is None else mode)  # mkstemp makes 0600 less the umask
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_hash(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes, read in blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def user_cache(kind: str) -> Path:
    """A folder of this user's cache for `kind` (meta-initialisations, probe verdicts): $PREFIT_CACHE/kind if set,
    else the platform's user cache folder (~/.cache/prefit/kind on Linux)."""
    if os.environ.get("PREFIT_CACHE"):
        return Path(os.environ["PREFIT_CACHE"]).expanduser() / kind
    import platformdirs

    return Path(platformdirs.user_cache_dir("prefit")) / kind


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp_path)`, then move the finished file onto `path`."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def holder_alive(entry: Mapping[str, Any]) -> bool:
    """Whether the process named by a record of a file it holds (a GPU lease, a cell's claim: `host`, `pid`,
    `start`) still runs; records of other hosts are trusted."""
    if entry.get("host") not in (None, socket.gethostname()):
        return True
    pid = entry["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    start = entry.get("start")
    return start is None or process_start(pid) in (None, start)  # a reused pid has another start time


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux); None where /proc does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None
