"""The interface every executor implements: describe the run as data, then run it."""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_madengine import masking
from pytest_madengine.context import Context
from pytest_madengine.models import Model
from pytest_madengine.output import OutputSink
from pytest_madengine.results.metrics import ResultRow


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
    files: Mapping[str, str] = field(default_factory=dict)  # written into run_dir before the run (a hostfile)
    # What runs argv (appended as "$@"): a launcher's setup, pre/post scripts, the environment
    # snapshot; the plan shows ``around`` for it, argv stays the model's own command.
    wrapper: tuple[str, ...] = ()
    around: str = ""
    # Data providers: (host folder, container path, read-only); a container backend mounts it at
    # the container path when it ``mounts_data`` (MAD_DATAHOME names that path), else the script
    # reads the host folder (MAD_DATAHOME), which a backend's own containers mount as it is,
    # and the plan's lines about the data step (what was served, or what a run would try).
    data_mounts: tuple[tuple[str, str, bool], ...] = ()
    data: tuple[str, ...] = ()

    def command(self, argv: Sequence[str] | None = None) -> tuple[str, ...]:
        """The full command: the wrapper, then ``argv`` (default: the model's)."""
        return (*self.wrapper, *(self.argv if argv is None else argv))


SECRET_MARKERS = masking.SECRET_MARKERS
marked_secrets = masking.marked_secrets


def shown_value(name: str, value: str) -> str:
    """A value as a plan prints it (``masking.shown_value``): secret-looking names are masked,
    and so is any value the user marked secret, whatever the name it is passed under."""
    return masking.shown_value(name, value)


def render_env(env: Mapping[str, str], indent: str = "  ") -> list[str]:
    return [f"{indent}{k}={shown_value(k, str(v))}" for k, v in sorted(env.items())]


@dataclass(frozen=True)
class Plan:
    """What a backend will do for one model: plain data, computed without side effects
    (torchx's dry-run request), printed by ``--mad-dry-run`` and at the top of the model's
    log, and executed exactly by ``Executor.run``."""

    spec: RunSpec

    @property
    def executor(self) -> str:
        return "base"

    def lines(self) -> list[str]:
        """The backend's own part of the rendering."""
        return []

    def render(self) -> str:
        s = self.spec
        head = [f"plan for {s.model.name} ({self.executor}): timeout "
                f"{f'{s.timeout:g} s' if s.timeout else 'none'}, GPUs {list(s.gpus) or 'none'}"]
        runner = s.env.get("MAD_MULTI_NODE_RUNNER", "")
        if "NODE_RANK" in s.env or "MASTER_ADDR" in s.env:
            head.append(f"  multi-node: node {s.env.get('NODE_RANK', '0')} of {s.env.get('NNODES', '?')}, "
                        f"rendezvous {s.env.get('MASTER_ADDR', '?')}:{s.env.get('MASTER_PORT', '?')}, "
                        f"runner {runner}")
        if s.around:
            head.append(f"  around the script: {s.around}")
        head += [f"  {line}" for line in s.data]
        if s.files:
            head.append(f"  files written into the run folder: {', '.join(sorted(s.files))}")
        return "\n".join([*head, *self.lines()])

    def comparable(self) -> str:
        """The rendering without what only a real run knows: the GPU ids it was given."""
        out = []
        for line in self.render().splitlines():
            if line.strip().split("=", 1)[0] in GPU_VARS:
                continue
            out.append(re.sub(r"GPUs (\[[^\]]*\]|none)", "GPUs", line))
        return "\n".join(out)


GPU_VARS = frozenset({"MAD_GPU_IDS", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES",
                      "MAD_RUNTIME_NGPUS"})


@dataclass
class RunOutcome:
    exit_code: int | None
    duration: float
    timed_out: bool = False
    interrupted: bool = False
    problem: str = ""  # a one-line reason the run could not complete (no daemon, OOM, ...)
    build_duration: float = 0.0
    image: str = ""
    dockerfile: str = ""  # the Dockerfile built, relative to the checkout
    base_docker: str = ""
    docker_sha: str = ""  # the image id the container ran
    nnodes: int | None = None  # nodes the run really used (SLURM), when the backend knows
    properties: dict[str, Any] = field(default_factory=dict)  # more facts, for JUnit properties only
    # Results the backend read itself (SLURM: per-rank values of every node combined, a
    # slurm_multi results file); None: the verdict reads the log and multiple_results as usual.
    rows: list[ResultRow] | None = None


class Cancel:
    """Set from another thread (Ctrl-C handler) to stop the run in progress."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __bool__(self) -> bool:
        return self.event.is_set()


@dataclass(frozen=True)
class ExecutorChoice:
    """What ``pytest_mad_make_executor`` returns: the backend, and why (for the header)."""

    executor: Executor
    why: str


class Executor(ABC):
    """A backend. What it can do is declared here, not found by probing: ``uses_dockerfiles``
    (a model runs once per matching Dockerfile), ``remote_gpus`` (GPUs belong to the nodes it
    submits to, not to this host's pool), ``submits_ahead`` (later items' work can be queued
    before their turn with ``submit_ahead``), and ``progress`` (set by the plugin: build,
    pull and queue progress for the terminal)."""

    name: str = "base"
    remote_gpus: bool = False
    submits_ahead: bool = False
    mounts_data: bool = False  # runs scripts in a container with RunSpec.data_mounts mounted
    progress: Callable[[str], None] | None = None

    def describe(self) -> str:
        """One line for the run header."""
        return self.name

    def uses_dockerfiles(self, context: Context) -> bool:
        """Whether runs build the model's Dockerfile: then a model runs once per matching one."""
        return False

    @abstractmethod
    def plan(self, spec: RunSpec) -> Plan:
        """What would run, as data; no process, no file written, no daemon call beyond
        read-only lookups. Raises ExecutorError when the model cannot be planned."""

    def prepare(self, plan: Plan, sink: OutputSink, cancel: Cancel) -> RunOutcome | None:
        """Slow set-up before a multi-node rendezvous (an image build). None when ready, else
        the failed outcome to report without running."""
        return None

    @abstractmethod
    def run(self, plan: Plan, sink: OutputSink, cancel: Cancel) -> RunOutcome:
        """Run exactly ``plan`` to the end, the timeout, or cancellation."""

    def submit_ahead(self, plan: Plan) -> None:  # noqa: B027 - only backends that queue work
        """Queue a later item's work now (``submits_ahead`` backends)."""

    def close(self) -> None:  # noqa: B027 - optional for executors that start nothing lasting
        """Session end: release whatever this executor started."""
