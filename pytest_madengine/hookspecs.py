"""Hooks pytest-madengine adds, so other plugins can extend a run without forking it
(pytest-xdist's ``newhooks.py`` is the model). Registered by ``plugin.pytest_addhooks``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_madengine.context import Context
    from pytest_madengine.executors.base import ExecutorChoice
    from pytest_madengine.results.result import ModelResult
    from pytest_madengine.session import Options


@pytest.hookspec(firstresult=True)
def pytest_mad_make_executor(config: pytest.Config, name: str, context: Context, options: Options,
                             run_id: str) -> ExecutorChoice | None:
    """Make the backend models run on: ``name`` is ``--mad-executor`` (``auto`` unless given).
    Return an ``ExecutorChoice(executor, why)`` to take it, None to leave it to the next
    implementation; the built-in backends (auto, docker, local, slurm) answer last. ``why``
    is shown in the run's header. Raise ``pytest_madengine.errors.UsageError`` for a name
    you own but cannot serve."""


@pytest.hookspec
def pytest_mad_result(item: pytest.Item, result: ModelResult) -> None:
    """Called on the process that ran ``item`` with its ``ModelResult``, pass or fail,
    before pytest reports it: upload results, add properties, page someone."""
