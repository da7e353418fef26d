"""The interface every executor implements: describe the run as data, then run it."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..context import Context
from ..models import Model
from ..output import OutputSink


@dataclass(frozen=True)
class RunSpec:
    """Everything an executor needs to run one model, independent of where it runs."""

    model: Model
    argv: tuple[str, ...]  # e.g. ("bash", "run.sh", "--batch", "8"), relative to run_dir
    env: Mapping[str, str]  # what madengine gives scripts, plus docker_env_vars and env_vars
    run_dir: Path  # host folder holding a copy of the script's folder; the script's cwd
    workspace: Path  # the checkout root (madengine's /myworkspace)
    timeout: float | None  # seconds; None = no limit
    gpus: tuple[int, ...]
    gpu_vendor: str
    use_gpu_devices: bool
    context: Context
    run_id: str
    dockerfile: Path | None = None  # the Dockerfile this item builds, pinned at collection


@dataclass
class RunOutcome:
    exit_code: int | None
    duration: float
    timed_out: bool = False
    interrupted: bool = False
    problem: str = ""  # a one-line reason the run could not complete (no daemon, OOM, ...)
    build_duration: float = 0.0
    image: str = ""
    properties: dict[str, Any] = field(default_factory=dict)  # executor facts for JUnit / perf.csv


class Cancel:
    """Set from another thread (Ctrl-C handler) to stop the run in progress."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __bool__(self) -> bool:
        return self.event.is_set()


class Executor(ABC):
    name: str = "base"

    def describe(self) -> str:
        """One line for the run header."""
        return self.name

    def uses_dockerfiles(self, context: Context) -> bool:
        """Whether runs build the model's Dockerfile: then a model runs once per matching one."""
        return False

    @abstractmethod
    def plan(self, spec: RunSpec) -> dict[str, Any]:
        """What would run, as plain data (no side effects): printed by dry runs, kept in logs."""

    def prepare(self, spec: RunSpec, sink: OutputSink, cancel: Cancel) -> RunOutcome | None:
        """Slow set-up before a multi-node rendezvous (an image build). None when ready, else
        the failed outcome to report without running."""
        return None

    @abstractmethod
    def run(self, spec: RunSpec, sink: OutputSink, cancel: Cancel) -> RunOutcome:
        """Run the model to the end, the timeout, or cancellation."""

    def close(self) -> None:  # noqa: B027 - optional for executors that start nothing lasting
        """Session end: release whatever this executor started."""
