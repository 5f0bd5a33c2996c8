"""What a cell folder holds, verifiably: its study, its files' sizes and hashes, whether a job may use it, and
which job is computing it now.

run.json is first a claim (`status: running`, the study), then, after `psnr.parquet` and `recon.npz`, the record
(`status: complete`, each file's size and sha256). A folder whose record and files match the study is skipped; one
of the same study with missing or changed files is run again; one of another study (`prefit.keys.config_diff` on
`prefit.config.study_of`) stops the job with the keys that differ, unless `train.overwrite=true`.

claim.json says which process computes the cell now (`hold_cell`): created exclusively before the job fits, its
mtime refreshed while it runs, removed when it ends. Another job of the same cell skips it (or waits for it); a
claim whose process is gone, whose SLURM job was requeued, or that is silent past `stale_s` is taken over.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefit.config import study_of
from prefit.errors import ConfigError
from prefit.io import file_hash, holder_alive, process_start, write_json
from prefit.keys import config_diff
from prefit.schema import PSNR_FILE, RECON_FILE, RUN_FILE

RECORDED_FILES = (PSNR_FILE, RECON_FILE)
CLAIM_FILE = "claim.json"
STALE_S = 300.0  # a claim whose heartbeat (every STALE_S / 4) is silent this long is taken over
_GUARD = f".{CLAIM_FILE}.taking-"  # + the token of the claim (or guard) being taken over: one taker at a time

log = logging.getLogger("prefit.records")


def file_record(path: Path) -> dict[str, Any]:
    """Size and sha256 of a file."""
    return {"bytes": path.stat().st_size, "sha256": file_hash(path)}


def files_match(out: Path, recorded: dict[str, Any]) -> bool:
    """Whether every file the record vouches for is there with the recorded size and then hash."""
    return set(recorded) == set(RECORDED_FILES) and all(
        (out / name).is_file()
        and (out / name).stat().st_size == expected.get("bytes")
        and file_record(out / name)["sha256"] == expected.get("sha256")
        for name, expected in recorded.items()
    )


def read_record(out: Path) -> dict[str, Any] | None:
    """The folder's run.json, None if it has none. An unreadable one is an error: it cannot say what it holds."""
    path = out / RUN_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path} is unreadable ({exc.__class__.__name__}), so what {out} holds is unknown: "
            "use another hydra.sweep.dir, or train.overwrite=true to replace it"
        ) from None
    return record if isinstance(record, dict) else {}


def job_action(out: Path, study: dict[str, Any], overwrite: bool) -> str:
    """`skip` (an intact result of this study) or `run`; ConfigError for another study's folder."""
    if out.is_dir() and not (out / CLAIM_FILE).exists():  # a claimed folder's writer may be mid-write
        _remove_leftovers(out)
    record = None if overwrite else read_record(out)
    if record is None:
        return "run"
    keys = config_diff(study_of(record.get("study") or {}), study)
    if keys:
        shown = ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
        raise ConfigError(
            f"{out} holds the result of another study ({shown} differ): use another hydra.sweep.dir, "
            "or train.overwrite=true to replace it"
        )
    if record.get("status") == "complete" and files_match(out, record.get("files") or {}):
        return "skip"
    return "run"


def claim(out: Path, study: dict[str, Any], started: str) -> None:
    """Mark the folder as being computed for `study` before anything else is written into it."""
    write_json(out / RUN_FILE, {"status": "running", "study": study, "started": started})


def complete(out: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write the final record, vouching for the files now in the folder: run.json is written last."""
    record = {**record, "status": "complete", "files": {name: file_record(out / name) for name in RECORDED_FILES}}
    write_json(out / RUN_FILE, record)
    return record


def interval(record: dict[str, Any]) -> tuple[datetime, datetime]:
    """When a job ran: its record's `started` and `finished` (KeyError, TypeError or ValueError if unusable)."""
    return datetime.fromisoformat(record["started"]), datetime.fromisoformat(record["finished"])


def span_s(intervals: Iterable[tuple[datetime, datetime]]) -> float:
    """Seconds from the first job's start to the last one's finish (jobs may run side by side)."""
    starts, ends = zip(*intervals)
    return (max(ends) - min(starts)).total_seconds()


def _remove_leftovers(out: Path) -> None:
    """Temporary files of atomic writes that never finished (their writer was killed)."""
    for leftover in out.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


@dataclass
class Claim:
    """A job's hold on a cell folder (`hold_cell`). `held`: this job computes the cell; if not, `reason` says why
    (`held`: another live process holds it, `holder` is its claim; `complete`: another job finished it meanwhile).
    `lost`: the claim was taken over while held (this process was silent past `stale_s`)."""

    path: Path
    held: bool
    reason: str = ""
    holder: dict[str, Any] | None = None
    token: str = ""
    lost: bool = False


@dataclass
class _Seen:
    """A claim (or guard) file as read: its record, identity (its token) and seconds since its last heartbeat."""

    record: dict[str, Any]
    ident: str
    age_s: float


def _now() -> float:
    return time.time()


def _identity(stale_s: float) -> dict[str, Any]:
    """Who holds: host, pid and its start time (a reused pid has another), SLURM job and restart count, a token."""
    pid = os.getpid()
    job = os.environ.get("SLURM_JOB_ID")
    slurm = {"job": job, "restart": int(os.environ.get("SLURM_RESTART_COUNT") or 0)} if job else None
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "start": process_start(pid),
        "slurm": slurm,
        "token": uuid.uuid4().hex,
        "started": datetime.now(timezone.utc).isoformat(),
        "stale_s": stale_s,
    }


def _create(path: Path, record: dict[str, Any]) -> bool:
    """Create `path` holding `record` unless it exists, atomically: a reader sees all of it or no file. Written to a
    temporary name, then hard-linked (which never replaces); where hard links fail, created with O_EXCL."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.new")
    data = json.dumps(record, indent=2, default=str) + "\n"
    with open(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644), "w") as f:
        f.write(data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return os.stat(tmp).st_nlink > 1  # NFS: a retried link whose first try had succeeded
    except OSError:  # no hard links here
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with open(fd, "w") as f:
            f.write(data)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _read(path: Path) -> _Seen | None:
    """The claim or guard at `path`, None if there is none; an unreadable one is known by its inode and age."""
    try:
        with open(path, "rb") as f:
            info, raw = os.fstat(f.fileno()), f.read()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    record = record if isinstance(record, dict) else {}
    token = record.get("token")
    ident = token if isinstance(token, str) and re.fullmatch(r"[0-9a-f]{8,64}", token) else f"inode{info.st_ino}"
    return _Seen(record, ident, _now() - info.st_mtime)


def _stale(seen: _Seen, me: dict[str, Any], stale_s: float) -> str | None:
    """Why the holder of `seen` is gone (None: it may still run): its process on this host is gone, its SLURM job
    was requeued (and so ended), or it has been silent past the longer of its and our `stale_s`."""
    rec = seen.record
    pid, start = rec.get("pid"), rec.get("start")
    if rec.get("host") == me["host"] and isinstance(pid, int):
        if (pid, start) == (me["pid"], me["start"]):
            return None  # this process (another thread of it)
        if not holder_alive({"host": rec["host"], "pid": pid, "start": start}):
            return "its process is gone"
    theirs, ours = rec.get("slurm"), me["slurm"]
    if isinstance(theirs, dict) and ours and theirs.get("job") == ours["job"]:
        if ours["restart"] > (theirs.get("restart") or 0):
            return "its SLURM job was requeued"
    limit = max(stale_s, float(rec.get("stale_s") or 0))
    if seen.age_s > limit:
        return f"silent for {seen.age_s:.0f} s (stale after {limit:.0f} s)"
    return None


def _take_over(out: Path, seen: _Seen, me: dict[str, Any], stale_s: float) -> bool:
    """Replace the stale claim `seen` by ours; False if another process got there first. One taker at a time: each
    first creates the guard named after the claim's token (only one can), then checks the claim is still the one it
    judged stale. A guard whose taker died is itself taken over the same way, by a guard named after its token."""
    claim = out / CLAIM_FILE
    chain = [(claim, seen)]  # the stale claim, then the guards of takers that died over it
    taker = {**me, "token": uuid.uuid4().hex, "takes": seen.ident}
    while True:
        guard = out / f"{_GUARD}{chain[-1][1].ident}"
        if _create(guard, taker):
            break
        seen_guard = _read(guard)
        if seen_guard is None or _stale(seen_guard, me, stale_s) is None:
            return False  # its taker finished, or another process is taking it over now
        chain.append((guard, seen_guard))
    replaced = False
    try:
        if any(getattr(_read(path), "ident", None) != was.ident for path, was in chain):
            return False  # taken over, or released, since it was read
        claim.unlink()
        replaced = True
        return _create(claim, me)
    finally:
        if replaced:  # the guards of dead takers over the old claim are moot now
            for path, was in chain[1:]:
                if getattr(_read(path), "ident", None) == was.ident:
                    path.unlink(missing_ok=True)
        guard.unlink(missing_ok=True)


def _acquire(out: Path, me: dict[str, Any], stale_s: float) -> tuple[bool, _Seen | None, str | None]:
    """(True, the stale claim taken over or None, why it was stale) once ours; (False, the live claim, None) if
    another process holds the cell."""
    claim = out / CLAIM_FILE
    for _ in range(50):
        if _create(claim, me):
            return True, None, None
        seen = _read(claim)
        if seen is None:
            continue  # released between the two steps
        why = _stale(seen, me, stale_s)
        if why is None:
            return False, seen, None
        if _take_over(out, seen, me, stale_s):
            return True, seen, why
        time.sleep(random.uniform(0.01, 0.1))
    return False, _read(claim), None


def _release(out: Path, me: dict[str, Any]) -> None:
    """Remove our claim, unless it was taken over; under its guard, so that no taker replaces it meanwhile."""
    claim, guard = out / CLAIM_FILE, out / f"{_GUARD}{me['token']}"
    if getattr(_read(claim), "ident", None) != me["token"] or not _create(guard, me):
        return  # taken over, or being taken over: the taker's now
    try:
        if getattr(_read(claim), "ident", None) == me["token"]:
            claim.unlink(missing_ok=True)
    finally:
        guard.unlink(missing_ok=True)


def _heartbeat(claim: Claim, stop: threading.Event, period_s: float) -> None:
    """Refresh the claim's mtime every `period_s` while the job runs; mark it lost if another took it over."""
    while not stop.wait(period_s):
        try:
            with open(claim.path, "rb") as f:
                if json.loads(f.read()).get("token") == claim.token:
                    os.utime(f.fileno())
                    continue
        except (OSError, ValueError, AttributeError):
            pass
        claim.lost = True
        log.warning("%s: this job's claim was taken over by another (this one was silent too long)", claim.path)
        return


def describe(record: dict[str, Any] | None, age_s: float | None = None) -> str:
    """A claim's holder in words: pid, host, SLURM job, since when, and its last heartbeat."""
    record = record or {}
    words = f"pid {record.get('pid', '?')} on {record.get('host', '?')}"
    slurm = record.get("slurm")
    if isinstance(slurm, dict) and slurm.get("job"):
        words += f" (SLURM job {slurm['job']})"
    words += f" since {record.get('started', '?')}"
    return words + (f", heartbeat {max(0.0, age_s):.0f} s ago" if age_s is not None else "")


@contextmanager
def hold_cell(
    out: Path,
    study: dict[str, Any],
    *,
    overwrite: bool = False,
    stale_s: float = STALE_S,
    wait: bool = False,
    poll_s: float | None = None,
) -> Iterator[Claim]:
    """Hold cell folder `out` for this process while the block runs: `claim.json` (host, pid and start time, SLURM
    job, start, token, study) is created exclusively, its mtime refreshed every `stale_s / 4` by a daemon thread,
    and removed at the end. Yields a Claim; `claim.held` False means: do not compute the cell, because another live
    process holds it (one info line names it; with `wait=True` it is waited for instead, polling every `poll_s`) or
    because, once held, `job_action` found it complete. A stale claim (see `_stale`) is taken over with one warning
    line; two processes taking it at once: one wins. Temporary files of dead writers are removed once held."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    me = {**_identity(stale_s), "study": study}
    path = out / CLAIM_FILE
    waiting = False
    while True:
        won, seen, why = _acquire(out, me, stale_s)
        if won:
            break
        holder = seen.record if seen else None
        if not wait:
            log.info("%s: computed by %s; skipped here", out, describe(holder, seen.age_s if seen else None))
            yield Claim(path, held=False, reason="held", holder=holder)
            return
        if not waiting:
            log.info("%s: computed by %s; waiting for it", out, describe(holder, seen.age_s if seen else None))
            waiting = True
        time.sleep(poll_s if poll_s is not None else min(5.0, stale_s / 4))
    if why:
        log.warning("%s: took over the claim of %s: %s", out, describe(seen.record, seen.age_s), why)
    claim = Claim(path, held=True, token=me["token"])
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(claim, stop, stale_s / 4), name="claim-heartbeat", daemon=True)
    beat.start()
    try:
        _remove_leftovers(out)
        if job_action(out, study, overwrite) == "skip":
            log.info("%s: completed by another job meanwhile; skipped here", out)
            claim.held, claim.reason = False, "complete"
        yield claim
    finally:
        stop.set()
        beat.join()
        _release(out, me)
