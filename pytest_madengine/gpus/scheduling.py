"""Scheduling policy for a shared GPU pool: largest-first order and waiting notes.

Policy: largest-first list scheduling. Models are ordered by the number of GPUs they take,
most first (stable, so equal models keep the models.json order). xdist's ``load``
scheduler hands items to workers in collection order, so the big models start while the
pool is still empty instead of waiting for a gap that a stream of small models keeps
filling; small models then fill the gaps the big ones leave.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

WAIT_NOTE_EVERY_S = 10.0


def gpu_demand(n_gpus: int, pool_size: int) -> int:
    """GPUs a model takes from a pool of ``pool_size``: ``-1`` means the whole pool."""
    return pool_size if n_gpus < 0 else n_gpus


def largest_first(items: Sequence[T], demand: Callable[[T], int | None]) -> list[T]:
    """Items with a demand (``demand(item)`` not None) sorted by it, descending and stable,
    in the positions such items held; the others (plain tests) keep their places."""
    slots = [i for i, item in enumerate(items) if demand(item) is not None]
    ordered = sorted((items[i] for i in slots), key=lambda item: -(demand(item) or 0))
    out = list(items)
    for slot, item in zip(slots, ordered):
        out[slot] = item
    return out


class WaitNotes:
    """``on_wait`` callback for ``GpuLeases.take``: writes "waiting for N GPUs" to the model's
    log when the wait starts and then at most every ``every`` seconds; remembers how long."""

    def __init__(self, note: Callable[[str], Any], n: int, pool: Sequence[int],
                 every: float = WAIT_NOTE_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.note = note
        self.n = n
        self.pool = list(pool)
        self.every = every
        self.clock = clock
        self.waited = 0.0
        self._last: float | None = None

    def __call__(self, elapsed: float) -> None:
        self.waited = elapsed
        now = self.clock()
        if self._last is not None and now - self._last < self.every:
            return
        self._last = now
        self.note(f"waiting for {self.n} GPUs of pool {self.pool} (all busy or taken by other models), "
                  f"{elapsed:.0f} s so far")
