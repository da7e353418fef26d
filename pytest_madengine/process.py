"""Process groups, deadlines and cancellation: the one helper every backend waits with.

A model's script, a framework's submit script and a git clone each run in their own process
group (``start_new_session=True``), so that their background children go with them; each
is waited for in short slices against a deadline and a cancel flag (Ctrl-C).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

KILL_GRACE_S = 5.0
SLICE_S = 0.1

TIMED_OUT, CANCELLED = "timed out", "cancelled"


class Deadline:
    """A point in ``time.monotonic()``; None = never."""

    def __init__(self, seconds: float | None, start: float | None = None) -> None:
        self.start = time.monotonic() if start is None else start
        self.at = None if seconds is None else self.start + seconds

    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def slice(self, step: float = SLICE_S) -> float:
        """How long to wait before looking again: ``step``, or less when the deadline is nearer."""
        return step if self.at is None else max(0.0, min(step, self.at - time.monotonic()))


def stop_reason(cancel: Callable[[], bool] | object, deadline: Deadline) -> str | None:
    """CANCELLED when ``cancel`` is set (a Cancel or a callable), TIMED_OUT past the deadline."""
    if (cancel() if callable(cancel) else bool(cancel)):
        return CANCELLED
    if deadline.expired():
        return TIMED_OUT
    return None


def wait(proc: subprocess.Popen[bytes], cancel: Callable[[], bool] | object, deadline: Deadline) -> str | None:
    """Wait for ``proc``; None when it ended, else why we stopped waiting (it still runs)."""
    while True:
        try:
            proc.wait(timeout=deadline.slice())
            return None
        except subprocess.TimeoutExpired:
            pass
        why = stop_reason(cancel, deadline)
        if why is not None:
            return why


def kill_group(pgid: int, grace: float = KILL_GRACE_S, leader: subprocess.Popen[bytes] | None = None,
               *, leader_only: bool = False) -> None:
    """SIGTERM the whole group, then SIGKILL whatever is left after ``grace``. With
    ``leader_only``, the grace ends as soon as the leader is gone (an orphaned child stays a
    zombie until init reaps it, and a group of zombies still answers ``killpg(pgid, 0)``)."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    end = time.monotonic() + grace
    while time.monotonic() < end:
        if leader is not None and leader.poll() is not None and leader_only:
            break
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)
    kill_now(pgid)


def kill_now(pgid: int) -> None:
    """SIGKILL the group; also the last word of every path (a second Ctrl-C included)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# A model's process group outlives the pytest process that started it when that process is
# SIGKILLed (an xdist worker lost to the OOM killer): nothing of ours is left to end it. So each
# group is written down while it runs (a file named after it in a ledger folder: the owner's pid
# and the model) and the next pytest process that looks (a replacement worker, the controller at
# the end) ends the groups whose owner is gone.
LEDGER = ".mad-groups"


def record_group(folder: Path, pgid: int, model: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    entry = folder / str(pgid)
    entry.write_text(f"{os.getpid()}\n{model}\n")
    return entry


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _group_of(pgid: int, model: str) -> list[int]:
    """The live members of group ``pgid`` that run ``model`` (a reused pid is someone else's)."""
    mark = f"MAD_MODEL_NAME={model}".encode()
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                members.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return members


def sweep_orphan_groups(folder: Path) -> list[str]:
    """End the recorded groups whose owner died; what was ended ("model (group N)")."""
    ended: list[str] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return ended
    for entry in entries:
        try:
            owner, model = entry.read_text().split("\n")[:2]
            pgid = int(entry.name)
            if _alive(int(owner)):
                continue
        except (OSError, ValueError):
            continue
        if _group_of(pgid, model):
            kill_now(pgid)
            ended.append(f"{model} (group {pgid})")
        entry.unlink(missing_ok=True)
    return ended
