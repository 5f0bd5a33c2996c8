"""Mid-cell checkpoints: a job cut by a time limit, a preemption or a crash resumes its cell where it stopped.

A job saves its cell's progress into `checkpoint.pt` in the cell's folder every `train.checkpoint_minutes` of wall
time and when asked to stop (SIGTERM, SIGUSR1, SIGUSR2: `prefit.train.stop_on_signals`), always between epochs,
atomically (`prefit.io.atomic_path`). The file holds the study, the plan's shape, where the cell was and the state
(`prefit.cell.run_plan`'s, with the engine's fit state, `prefit.engine.state`), and a sha256 of all of it. A job
trusts it only if the hash, the study (`prefit.keys.config_diff`) and the plan match; otherwise it says so in one
warning line and starts the cell from scratch. Resumed, the compiled CPU step gives the same bits as a run never cut.
"""

from __future__ import annotations

import hashlib
import logging
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import torch

from prefit.io import atomic_path
from prefit.keys import config_diff

if TYPE_CHECKING:
    from prefit.engine.state import Saver

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = 1  # bump when the state's layout changes: an older file is then discarded, not misread


class Interrupted(Exception):
    """The job was asked to stop and its cell's progress is saved: it ends, to be rerun (or requeued) and resume.
    `previous` is the signal's handler before the job's own (submitit's requeues the job), for the job to call."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message, signum)  # all in `args`: the exception survives a launcher's pickling
        self.previous: Any = None

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[type, tuple]:
        return type(self), self.args  # the previous handler stays in this process

    @property
    def signum(self) -> int:
        return int(self.args[1])

    @property
    def status(self) -> int:
        """The exit status, as a shell reports a process ended by the signal: 128 + its number."""
        return 128 + self.signum

    def chain(self) -> None:
        """Call the handler the signal had before the job's own, if it was a Python one (it may exit)."""
        if callable(self.previous):
            self.previous(self.signum, None)


class CellCheckpoint:
    """A cell's checkpoint file: when a save is due, writing and reading it, and the stop requests that make a save
    due at once. `minutes` 0 writes none (a file left by an earlier job is still resumed)."""

    def __init__(self, path: Path, study: dict[str, Any], minutes: float, clock: Callable[[], float] = time.monotonic):
        self.path, self.study = Path(path), study
        self.seconds = 60.0 * minutes if minutes > 0 else math.inf
        self.clock = clock
        self.next = clock() + self.seconds
        self.plan: dict[str, Any] = {}
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}  # signal -> the handler before the job's own

    def request_stop(self, signum: int, frame: object = None) -> None:
        """A signal handler: the next safe point saves and ends the job. Nothing else happens in the handler."""
        self.signum = signum

    def due(self) -> bool:
        """Whether the fits should stop and save now: a stop was requested, or `minutes` passed since the last save."""
        return self.signum is not None or self.clock() >= self.next

    def bind(self, make_state: Callable[[dict[str, Any] | None], dict[str, Any]]) -> FitSaver:
        """The engine's view of this checkpoint for one fit: its saves go through `make_state`, the cell's state
        around the fit's."""
        return FitSaver(self, make_state)

    def save(self, state: dict[str, Any]) -> None:
        """Write the cell's state (with `position`: where the cell is); raise Interrupted if a stop was requested."""
        reason = "timer" if self.signum is None else signal.Signals(self.signum).name
        record = {"format": FORMAT, "study": self.study, "plan": self.plan, "position": state["position"]}
        record.update(reason=reason, state=state)
        record["sha256"] = digest(record)
        with atomic_path(self.path) as tmp:
            torch.save(record, tmp)
        self.next = self.clock() + self.seconds
        log.info("checkpoint (%s): %s -> %s", reason, describe(state["position"]), self.path)
        if self.signum is not None:
            message = (
                f"stopped by {reason}: the cell's progress ({describe(state['position'])}) is saved in {self.path}; "
                "rerun the same command to resume"
            )
            stop = Interrupted(message, self.signum)
            stop.previous = self.previous.get(self.signum)
            raise stop

    def resume(self, plan: dict[str, Any]) -> dict[str, Any] | None:
        """The saved state of this study and `plan` (which later saves record), or None: no file, or one not to be
        trusted (damaged, of another format, study or plan), discarded with one warning line."""
        self.plan = plan
        self.next = self.clock() + self.seconds  # the fits start now: the first save is `minutes` from here
        if not self.path.is_file():
            return None
        why = None
        try:
            record = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # a truncated or garbled file: whatever the reader raises
            record, why = None, f"unreadable: {type(error).__name__}"
        if why is None:
            why = _distrust(record, self.study, plan)
        if why is not None:
            log.warning("%s %s: discarded, the cell starts from scratch", self.path, why)
            return None
        log.info("resuming from %s: %s", self.path, describe(record["position"]))
        return record["state"]

    def remove(self) -> None:
        """Once the cell's results are complete: nothing is left to resume."""
        self.path.unlink(missing_ok=True)


class FitSaver:
    """`prefit.engine.state.Saver` for one fit: due when the checkpoint (or an outer saver) is; a save wraps the
    fit's state in the cell's (or the outer fit's)."""

    def __init__(
        self, checkpoint: CellCheckpoint | Saver, make_state: Callable[[dict[str, Any] | None], dict[str, Any]]
    ):
        self.checkpoint, self.make_state = checkpoint, make_state

    def due(self) -> bool:
        return self.checkpoint.due()

    def save(self, state: dict[str, Any] | None) -> None:
        self.checkpoint.save(self.make_state(state))


def _distrust(record: Any, study: dict[str, Any], plan: dict[str, Any]) -> str | None:
    """Why a loaded record is not to be resumed (None: it is)."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return "is of another format"
    content = {key: value for key, value in record.items() if key != "sha256"}
    if record.get("sha256") != digest(content):
        return "is damaged (its content does not match its hash)"
    keys = config_diff(record.get("study") or {}, study)
    if keys:
        return f"is of another study ({', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''} differ)"
    if record.get("plan") != plan:
        return f"is of another plan ({record.get('plan')} saved, {plan} now)"
    return None


def describe(position: dict[str, Any]) -> str:
    """Where a cell is, for a log line: `stage 2/2, 3,200 of 6,000 member-epochs`."""
    return (
        f"stage {position['stage'] + 1}/{position['stages']}, "
        f"{position['member_epochs']:,} of {position['of']:,} member-epochs"
    )


def read_position(path: Path | BinaryIO) -> dict[str, Any]:
    """Where a checkpoint file's cell was (`stage` from 0, `stages`, `member_epochs` done in it, `of`), unchecked."""
    return torch.load(path, map_location="cpu", weights_only=True)["position"]


def digest(data: Any) -> str:
    """A sha256 of nested plain data and tensors (their dtype, shape and bytes), independent of how they are held."""
    sha = hashlib.sha256()
    _feed(sha, data)
    return sha.hexdigest()


def _feed(sha: Any, data: Any) -> None:
    if isinstance(data, torch.Tensor):
        t = data.detach().cpu().contiguous()
        sha.update(f"tensor {t.dtype} {tuple(t.shape)};".encode())
        sha.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(data, dict):
        sha.update(f"dict {len(data)};".encode())
        for key in sorted(data, key=repr):
            _feed(sha, key)
            _feed(sha, data[key])
    elif isinstance(data, list | tuple):
        sha.update(f"list {len(data)};".encode())
        for item in data:
            _feed(sha, item)
    else:
        sha.update(f"{type(data).__name__} {data!r};".encode())
