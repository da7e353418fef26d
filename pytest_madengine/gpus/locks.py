"""GPU leases shared by every pytest process on this host (xdist workers included).

Each GPU id is a lock file held with ``flock``: the kernel releases it when the
holder exits for any reason, crashes included, so a lost worker never keeps a GPU.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

POLL_S = 0.1
PRIORITY_AFTER_S = 30.0  # a model waiting this long stops others from taking GPUs until it has its set
_TICKETS = itertools.count()


@dataclass(frozen=True)
class GpuLeases:
    folder: Path
    ids: tuple[int, ...]

    @classmethod
    def for_run(cls, work_dir: Path, ids: tuple[int, ...]) -> GpuLeases:
        return cls.for_folder(Path(work_dir) / ".gpu-locks", ids)

    @classmethod
    def for_folder(cls, folder: Path, ids: tuple[int, ...]) -> GpuLeases:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            folder.chmod(0o1777)  # host-wide folder: other users' runs must lock the same GPUs
        except PermissionError:
            pass
        return cls(folder, ids)

    def _try(self, gpu: int) -> int | None:
        fd = os.open(self.folder / f"gpu{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _announce(self, n: int) -> tuple[int, Path]:
        """Say "a model waits for ``n`` GPUs" for as long as the returned lock is held: a file
        ``waiting/<n>-<pid>-<k>.lock``, locked before it is renamed into place, so a file that
        can be locked by someone else belongs to a dead process."""
        folder = self.folder / "waiting"
        folder.mkdir(exist_ok=True)
        name = f"{n:04d}-{os.getpid()}-{next(_TICKETS)}.lock"
        tmp = folder / f".{name}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(tmp, folder / name)
        return fd, folder / name

    def _larger_waiting(self, n: int) -> bool:
        """Whether a live model waits for more GPUs than ``n`` (stale announcements are removed)."""
        for path in (self.folder / "waiting").glob("[0-9]*.lock"):
            try:
                if int(path.name.split("-", 1)[0]) <= n:
                    continue
                fd = os.open(path, os.O_RDWR)
            except (ValueError, FileNotFoundError):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            else:
                path.unlink(missing_ok=True)  # its process died while waiting
            finally:
                os.close(fd)
        return False

    def _gate(self, mode: int) -> int | None:
        fd = os.open(self.folder / "priority.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    @contextmanager
    def take(self, n: int, on_wait: Callable[[float], None] | None = None,
             priority_after: float = PRIORITY_AFTER_S) -> Iterator[tuple[int, ...]]:
        """Wait until ``n`` ids are free, hold them for the block, release on every path.

        Against starvation (a big model never finding all its GPUs free at once while small
        ones keep taking them, free GPUs being taken within microseconds):

        * larger first: a waiting model announces how many GPUs it wants, and a model takes
          none while a live model waits for more than it does;
        * after ``priority_after`` s of waiting a model takes the priority gate (exclusive);
          every other model takes GPUs only while the gate is free (shared), so the pool
          drains to the waiting model whatever its size. One holder at a time.

        Every lock is an ``flock``: the kernel drops it with its process."""
        start = time.monotonic()
        held: dict[int, int] = {}
        gate: int | None = None
        announced: tuple[int, Path] | None = None
        try:
            announced = self._announce(n)
            while True:
                if gate is None and time.monotonic() - start >= priority_after:
                    gate = self._gate(fcntl.LOCK_EX)
                shared = None if gate is not None else self._gate(fcntl.LOCK_SH)
                if shared is not None and self._larger_waiting(n):
                    os.close(shared)
                    shared = None
                if gate is None and shared is None:  # another model has priority: take nothing now
                    if on_wait is not None:
                        on_wait(time.monotonic() - start)
                    time.sleep(POLL_S)
                    continue
                for gpu in self.ids:
                    if len(held) == n:
                        break
                    if gpu not in held:
                        fd = self._try(gpu)
                        if fd is not None:
                            held[gpu] = fd
                if shared is not None:
                    os.close(shared)
                if len(held) == n:
                    break
                # All or nothing: holding a partial set could deadlock two large models.
                for fd in held.values():
                    os.close(fd)
                held.clear()
                if on_wait is not None:
                    on_wait(time.monotonic() - start)
                time.sleep(POLL_S)
            announced[1].unlink(missing_ok=True)  # has its set: the others may take GPUs again
            for fd in (gate, announced[0]):
                if fd is not None:
                    os.close(fd)
            gate = announced = None
            yield tuple(sorted(held))
        finally:
            for fd in held.values():
                os.close(fd)
            if gate is not None:
                os.close(gate)
            if announced is not None:
                announced[1].unlink(missing_ok=True)
                os.close(announced[0])
