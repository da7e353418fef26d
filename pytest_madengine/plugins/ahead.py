"""Submit upcoming items' jobs before their turn, so one pytest process keeps several
SLURM jobs in the queue at once (pytest itself runs items one after another).

Before each item runs, the next ``SUBMIT_AHEAD`` model items this process will run (the
rest of ``session.items``, or, under xdist, the worker's queue) are planned with the
session's ``plan_item`` (the same pure step a run and a dry run use), their run folders are
prepared, and their plans submitted. When the item runs, the executor takes its job if the
plan is still the same (else it cancels it and submits again). Jobs of items that never run
are cancelled at the end of the session.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_madengine.plugins.items import ModelItem
from pytest_madengine.session import NotRunnable


def _worker_queue(config: pytest.Config) -> list[int] | None:
    """Indices of the items an xdist worker has been given but not started (None: not xdist)."""
    if not hasattr(config, "workerinput"):
        return None
    # xdist has no public API for a worker's pending queue (its WorkerInteractor's torun and
    # nextitem_index); a change is caught by test_private_apis.py, and here only costs the
    # optimisation (an empty queue).
    for plugin in config.pluginmanager.get_plugins():
        if type(plugin).__name__ == "WorkerInteractor" and hasattr(plugin, "torun"):
            try:
                with plugin.torun.lock() as queue:
                    pending = [i for i in queue if isinstance(i, int)]
            except Exception:
                return []
            nxt = getattr(plugin, "nextitem_index", None)
            return ([nxt] if isinstance(nxt, int) else []) + pending
    return []


class SubmitAhead:
    def __init__(self, session: Any, depth: int) -> None:
        self.session = session
        self.depth = depth
        self.seen: set[str] = set()
        self._index: dict[str, int] | None = None

    def upcoming(self, item: pytest.Item, nextitem: pytest.Item | None) -> list[pytest.Item]:
        items = item.session.items
        queue = _worker_queue(item.config)
        if queue is not None:
            return [item, *(items[i] for i in queue if 0 <= i < len(items))]
        if self._index is None:
            self._index = {it.nodeid: i for i, it in enumerate(items)}
        at = self._index.get(item.nodeid)
        if at is None or at >= len(items) or items[at] is not item:
            return [item] + ([nextitem] if nextitem is not None else [])
        return items[at:]

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        session = self.session
        if self.depth <= 0 or session.interrupts.interrupted:
            return
        planned = 0
        for it in self.upcoming(item, nextitem):
            if planned > self.depth:
                break
            if not isinstance(it, ModelItem):
                continue
            planned += 1
            if it.nodeid in self.seen:
                continue
            self.seen.add(it.nodeid)
            if session.skip_reason_of(it.model) is not None or it.model.data:  # data is fetched at its turn
                continue
            try:
                run = session.item_run(it.model, it.extra_args, it.variant, it.name)
                session.prepare_run_folder(run, lambda text: None)
                session.executor.submit_ahead(session.executor.plan(session.spec_for(run, ())))
            except NotRunnable:
                continue  # the item fails on its own, with this reason
            except Exception as exc:  # an optimisation only: the item still submits on its own
                item.warn(pytest.PytestWarning(f"slurm: could not submit {it.nodeid} ahead: {exc!r}"))


def register(config: pytest.Config, session: Any) -> None:
    """Called by the plugin when the run's executor ``submits_ahead``."""
    if not session.executor.submits_ahead or session.multi_node.configured:
        return
    depth = getattr(session.executor, "ahead_depth", 0)
    if depth > 0:
        config.pluginmanager.register(SubmitAhead(session, depth), "madengine-slurm-ahead")
