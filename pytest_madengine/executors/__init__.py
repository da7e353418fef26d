"""Executors: where a model's command runs (host process, container, SLURM job)."""

from __future__ import annotations

from pytest_madengine.executors.base import Executor, RunOutcome, RunSpec

__all__ = ["Executor", "RunOutcome", "RunSpec"]
