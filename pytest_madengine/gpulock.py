"""GPU leases shared by every pytest process on this host (xdist workers included).

Each GPU id is a lock file held with ``flock``: the kernel releases it when the
holder exits for any reason, crashes included, so a lost worker never keeps a GPU.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

POLL_S = 0.1


@dataclass(frozen=True)
class GpuLeases:
    folder: Path
    ids: tuple[int, ...]

    @classmethod
    def for_run(cls, work_dir: Path, ids: tuple[int, ...]) -> GpuLeases:
        folder = Path(work_dir) / ".gpu-locks"
        folder.mkdir(parents=True, exist_ok=True)
        return cls(folder, ids)

    def _try(self, gpu: int) -> int | None:
        fd = os.open(self.folder / f"gpu{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    @contextmanager
    def take(self, n: int, on_wait: Callable[[float], None] | None = None) -> Iterator[tuple[int, ...]]:
        """Wait until ``n`` ids are free, hold them for the block, release on every path."""
        start = time.monotonic()
        held: dict[int, int] = {}
        try:
            while True:
                for gpu in self.ids:
                    if len(held) == n:
                        break
                    if gpu not in held:
                        fd = self._try(gpu)
                        if fd is not None:
                            held[gpu] = fd
                if len(held) == n:
                    break
                # All or nothing: holding a partial set could deadlock two large models.
                for fd in held.values():
                    os.close(fd)
                held.clear()
                if on_wait is not None:
                    on_wait(time.monotonic() - start)
                time.sleep(POLL_S)
            yield tuple(sorted(held))
        finally:
            for fd in held.values():
                os.close(fd)
