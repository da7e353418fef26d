"""Run a model in a Docker container, madengine-style, through the Docker SDK.

Describe, then do: ``plan(spec)`` turns a ``RunSpec`` into plain data (the Dockerfile chosen,
the image name, build context and args, the container's command, mounts, devices, labels);
``run`` carries it out in four steps:

1. image: reuse ``ci-<model>_<dockerfile stem>`` when its ``org.pytest-madengine.build-hash``
   label equals the hash of this build's inputs (Dockerfile, build-context files, build args),
   else build it. Builds of one image are serialised across processes (xdist workers) with an
   ``fcntl`` lock under ``<work_dir>/.build-locks``; a failed build is remembered so that other
   models of the same image fail at once with the same reason.
2. base image: a ``BASE_DOCKER`` that is not present locally is pulled first, after a
   ``client.login`` with credentials from ``credential.json`` / ``MAD_DOCKERHUB_*``.
3. container: started detached with madengine's conventions (workspace at ``/myworkspace``,
   the run folder reached through it as working dir, host network and IPC,
   root, SYS_PTRACE, no seccomp, GPU devices); output streamed line by line into the sink;
   waited for in short slices against the deadline and the Cancel flag.
4. cleanup: the container is removed on every path unless ``--mad-keep-alive``; ``close()``
   removes whatever this run still has, and construction sweeps containers left by a pytest
   that was killed (owner pid dead).

Every container and image carries ``org.pytest-madengine.*`` labels, so what we made can be
found and removed by label, never by name pattern.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_madengine import process
from pytest_madengine.errors import ExecutorError
from pytest_madengine.executors.base import Cancel, Executor, Plan, RunOutcome, RunSpec, render_env, shown_value
from pytest_madengine.executors.docker import dockerfiles, registry
from pytest_madengine.models import run_options as run_options
from pytest_madengine.output import MAX_LINE, OutputSink
from pytest_madengine.workspace import livelogs

LABEL = "org.pytest-madengine"
LABEL_HASH = f"{LABEL}.build-hash"
LABEL_BUILD_SESSION = f"{LABEL}.build-session"  # "<run>@<unix time of the build>", for --mad-rebuild
LABEL_RUN_ID = f"{LABEL}.run-id"
LABEL_MODEL = f"{LABEL}.model"
LABEL_OWNER = f"{LABEL}.owner"  # hostname:pid[:pid-namespace inode] of the pytest that started it
LABEL_OWNER_START = f"{LABEL}.owner-start"  # that pid's start time, so a reused pid is not taken for it
LABEL_KEEP_ALIVE = f"{LABEL}.keep-alive"

HASH_SCHEMA = "pytest-madengine build inputs v1"
WORKSPACE_MOUNT = "/myworkspace"
EXIT_CODE_FILE = ".mad-exit-code"  # keep-alive: the script's exit code, written by the wrapper
KEEP_ALIVE_MARK = "[pytest-madengine] script exited with status"
DOCKERFILE_IN_TAR = ".pytest-madengine.Dockerfile"

API_TIMEOUT_S = 30  # every API call but the streams (build, pull, logs, wait)
BUILD_TIMEOUT_S = 3600.0  # default limit of an image build (base pull included): docker_build_timeout
PING_TIMEOUT_S = 3
DOWN_MEMORY_S = 30  # how long "the daemon is not answering" is believed without asking again
SLICE_S = 0.1
REMOVE_TIMEOUT_S = 20
LOG_DRAIN_S = 10
BUILD_TAIL_LINES = 15

# The wrapper that keeps a container alive after its script: the script is "$@" (argv as
# positional arguments, never a shell string); its status goes to a file in the run folder.
KEEP_ALIVE_SCRIPT = (
    'status=0; "$@" || status=$?; '
    # relative: the wrapper's cwd is the run folder, whatever the script does with its own
    f'echo "$status" > {EXIT_CODE_FILE}.tmp && '
    f'mv {EXIT_CODE_FILE}.tmp {EXIT_CODE_FILE}; '
    f'echo "{KEEP_ALIVE_MARK} $status; container kept alive"; '
    "while :; do sleep 3600; done"
)


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


# ------------------------------------------------------------------ errors, one line each


def short_reason(exc: BaseException) -> str:
    """The innermost useful words of a (wrapped) connection error, on one line."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    best: str | None = None
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        name = type(e).__name__
        if "Timeout" in name or isinstance(e, TimeoutError | socket.timeout):
            return "no answer in time (timed out)"
        if isinstance(e, OSError) and e.strerror:
            best = f"{e.strerror} (errno {e.errno})"
        for nxt in (e.__cause__, e.__context__, *[a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]):
            if nxt is not None:
                stack.append(nxt)
        reason = getattr(e, "reason", None)
        if isinstance(reason, BaseException):
            stack.append(reason)
    text = best or str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]


def daemon_error(exc: BaseException) -> ExecutorError:
    return ExecutorError(f"Docker daemon at {docker_host()} is not answering: {short_reason(exc)}")


def _is_connection_error(exc: BaseException) -> bool:
    """A transport failure (no daemon, connection dropped, timeout), as opposed to an API answer."""
    import requests
    from docker.errors import APIError, DockerException

    if isinstance(exc, APIError):
        return False
    if isinstance(exc, requests.exceptions.RequestException | ConnectionError | TimeoutError):
        return True
    return isinstance(exc, DockerException) and "Error while fetching server API version" in str(exc)


def api_message(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    text = explanation if isinstance(explanation, str) and explanation else str(exc)
    return " ".join(text.split())[:500]


# ------------------------------------------------------------------ plan (data only)


@dataclass(frozen=True)
class BuildPlan:
    image: str
    dockerfile: str  # absolute path of the Dockerfile chosen ("" with MAD_CONTAINER_IMAGE)
    dockerfile_header: dict[str, Any] | None
    context_dir: str
    build_args: dict[str, str]
    base_docker: str
    base_registry: str  # registry host of base_docker ("docker.io" for Docker Hub)
    prebuilt: bool = False  # MAD_CONTAINER_IMAGE: run this image, build nothing


@dataclass(frozen=True)
class ContainerPlan:
    """What ``docker run`` gets. No ``shm_size``: with ``ipc_mode="host"`` the container shares
    the host's /dev/shm and Docker ignores ShmSize (checked on Docker 20.10: 64 MB without
    host IPC, the host's full tmpfs with it)."""

    name: str
    image: str
    command: list[str]
    working_dir: str
    environment: dict[str, str]
    volumes: dict[str, dict[str, str]]  # host path -> {"bind": container path, "mode": "rw"}
    devices: list[str]
    group_add: list[str]
    gpu_request: dict[str, Any] | None  # NVIDIA: {"device_ids": [...], "capabilities": [["gpu"]]}
    cpuset_cpus: str | None
    labels: dict[str, str]
    keep_alive: bool
    network_mode: str = "host"
    ipc_mode: str = "host"
    user: str = "root"
    cap_add: list[str] = field(default_factory=lambda: ["SYS_PTRACE"])
    security_opt: list[str] = field(default_factory=lambda: ["seccomp=unconfined"])
    # The model card's additional_docker_run_options, parsed: applied last, as madengine
    # appends them to its `docker run` line (so they win over what comes before).
    extra: dict[str, Any] = field(default_factory=dict)

    def run_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``client.containers.run(detach=True, ...)``."""
        from docker.types import DeviceRequest

        kw: dict[str, Any] = {
            "image": self.image, "command": self.command, "name": self.name, "detach": True,
            "working_dir": self.working_dir, "environment": self.environment, "volumes": self.volumes,
            "network_mode": self.network_mode, "ipc_mode": self.ipc_mode, "user": self.user,
            "cap_add": self.cap_add, "security_opt": self.security_opt, "labels": self.labels,
            "stdin_open": False, "tty": False,
        }
        if self.devices:
            kw["devices"] = self.devices
        if self.group_add:
            kw["group_add"] = self.group_add
        if self.gpu_request:
            kw["device_requests"] = [DeviceRequest(**self.gpu_request)]
        if self.cpuset_cpus:
            kw["cpuset_cpus"] = self.cpuset_cpus
        if self.extra:
            kw = run_options.merge_into(kw, self.extra)
        return kw


@dataclass(frozen=True)
class DockerPlan(Plan):
    build: BuildPlan
    container: ContainerPlan
    rebuild: bool = False

    @property
    def executor(self) -> str:
        return "docker"

    def lines(self) -> list[str]:
        b, c = self.build, self.container
        out: list[str] = []
        if b.prebuilt:
            out.append(f"  image: {b.image} (MAD_CONTAINER_IMAGE: run as given, nothing built)")
        else:
            reuse = ("always built (--mad-rebuild)" if self.rebuild else
                     "reused when an image with the same inputs' hash exists, else built")
            out += [f"  image: {b.image}, {reuse}", f"  dockerfile: {b.dockerfile}"
                    + (f" {b.dockerfile_header}" if b.dockerfile_header is not None else " (no CONTEXT header)"),
                    f"  build context: {b.context_dir}",
                    "  build args: " + (", ".join(f"{k}={shown_value(k, v)}" for k, v in sorted(b.build_args.items()))
                                        or "(none)")]
            if b.base_docker:
                out.append(f"  base image: {b.base_docker} (registry {b.base_registry})")
        out += [f"  container: {c.name} (a suffix when a live container holds the name)",
                f"  command: {shlex.join(c.command)}", f"  working dir: {c.working_dir}",
                "  mounts: " + ", ".join(f"{h} -> {v['bind']} ({v['mode']})" for h, v in sorted(c.volumes.items())),
                f"  devices: {', '.join(c.devices) or 'none'}"
                + (f"; GPU request {c.gpu_request}" if c.gpu_request else "")
                + (f"; groups {', '.join(c.group_add)}" if c.group_add else ""),
                f"  network {c.network_mode}, ipc {c.ipc_mode}, user {c.user}, cap_add {', '.join(c.cap_add)}, "
                f"security_opt {', '.join(c.security_opt)}" + (f", cpuset {c.cpuset_cpus}" if c.cpuset_cpus else "")]
        if c.extra:
            out.append("  additional_docker_run_options: " + ", ".join(
                f"{k}={'***' if k == 'environment' else v}" for k, v in sorted(c.extra.items())))
        out += ["  environment:", *render_env(c.environment, "    ")]
        return out


def build_context_dir(spec: RunSpec, dockerfile: Path) -> Path:
    """madengine 2.x: the model's ``dockercontext``; ``.`` for Primus Dockerfiles; else
    ``./docker`` of the workspace. When the workspace has no ``docker/`` (madengine's build
    would fail) the Dockerfile's own folder is used."""
    raw = spec.model.raw.get("dockercontext")
    if raw:
        p = Path(str(raw))
        return p if p.is_absolute() else spec.workspace / p
    if "primus" in dockerfile.name.lower():
        return spec.workspace
    default = spec.workspace / "docker"
    return default if default.is_dir() else dockerfile.parent


def plan_build(spec: RunSpec) -> BuildPlan:
    ctx = spec.context
    prebuilt = str(ctx.get("MAD_CONTAINER_IMAGE") or "")
    if prebuilt:
        return BuildPlan(prebuilt, "", None, "", {}, prebuilt, registry.registry_of(prebuilt), prebuilt=True)
    if spec.dockerfile is not None:  # pinned at collection: one of several matching files
        chosen = dockerfiles.Candidate(spec.dockerfile, dockerfiles.parse_header(dockerfiles.read_head(spec.dockerfile),
                                                                                spec.dockerfile))
    else:
        chosen = dockerfiles.select(spec.model.dockerfile_prefix, ctx, spec.gpu_vendor, model=spec.model.name)
    path = chosen.path.resolve()
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ExecutorError(f"{path}: cannot read: {exc.strerror or exc}") from None
    args = {str(k): str(v) for k, v in ctx.dict_of("docker_build_arg").items()}
    # madengine passes the GPU architecture to every build; only where the Dockerfile reads it,
    # so that other images do not change hash with the host.
    arch = spec.env.get("MAD_SYSTEM_GPU_ARCHITECTURE", "")
    if arch and "MAD_SYSTEM_GPU_ARCHITECTURE" not in args and "MAD_SYSTEM_GPU_ARCHITECTURE" in text:
        args["MAD_SYSTEM_GPU_ARCHITECTURE"] = arch
    base = dockerfiles.base_image(text, args)
    return BuildPlan(
        image=dockerfiles.image_name(spec.model.name, path), dockerfile=str(path),
        dockerfile_header=dict(chosen.header) if chosen.header is not None else None,
        context_dir=str(build_context_dir(spec, path).resolve()), build_args=args, base_docker=base,
        base_registry=registry.registry_of(base) if base else "",
    )


_CONTAINER_BAD = re.compile(r"[^a-zA-Z0-9_.-]+")


def container_name(image: str) -> str:
    """madengine's ``container_<image>`` (``container_ci-<model>_<dockerfile stem>``): users'
    ``docker exec``/``docker ps`` habits are built on it. ``/`` and ``:`` of a registry
    reference become ``_``; a digest is dropped."""
    ref = image.split("@", 1)[0]
    slug = _CONTAINER_BAD.sub("_", ref.replace("/", "_").replace(":", "_")).strip("_.-")[:200] or "model"
    return f"container_{slug}"


def container_workdir(spec: RunSpec) -> tuple[str, dict[str, dict[str, str]]]:
    """(working dir, extra mounts) for the run folder. madengine runs scripts in
    ``/myworkspace/run_directory``; a separate mount there would make Docker create an empty
    ``run_directory/`` in the checkout (the mount point, inside the workspace's bind mount).
    So a run folder inside the checkout is reached through the workspace mount, and one
    outside it is mounted at its own host path."""
    run_dir = Path(os.path.abspath(spec.run_dir))
    workspace = Path(os.path.abspath(spec.workspace))
    try:
        rel = run_dir.relative_to(workspace)
    except ValueError:
        return str(run_dir), {str(run_dir): {"bind": str(run_dir), "mode": "rw"}}
    return f"{WORKSPACE_MOUNT}/{rel.as_posix()}", {}


def pid_namespace() -> str:
    """The inode of this process's pid namespace ("" when unknown): pids are only comparable
    within one namespace, and containers on one host may share its hostname."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def owner_label() -> str:
    ns = pid_namespace()
    return f"{socket.gethostname()}:{os.getpid()}" + (f":{ns}" if ns else "")


_OWNER = re.compile(r"(?P<host>[^:]*):(?P<pid>[0-9]+)(?::(?P<ns>[0-9]+))?")


def parse_owner(label: str) -> tuple[str, int, str | None] | None:
    """(hostname, pid, pid namespace or None for labels written before it was recorded)."""
    m = _OWNER.fullmatch(label)
    return None if m is None else (m["host"], int(m["pid"]), m["ns"])


def build_timeout(spec: RunSpec) -> float:
    """Seconds an image build (base image pull included) may take: the context's
    ``docker_build_timeout`` when given, else the model's timeout when longer than an hour,
    else an hour. A short run timeout (``--mad-timeout 60``) does not cut a long build short."""
    raw = spec.context.get("docker_build_timeout")
    if raw not in (None, ""):
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = 0.0
        if not value > 0 or value == float("inf"):
            raise ExecutorError(f"context key 'docker_build_timeout' must be a number of seconds > 0, got {raw!r}")
        return value
    return max(BUILD_TIMEOUT_S, spec.timeout or 0.0)


def process_start(pid: int) -> str:
    """The start time of ``pid`` (clock ticks since boot); "" when unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def plan_container(spec: RunSpec, image: str, *, name: str, keep_alive: bool) -> ContainerPlan:
    ctx = spec.context
    env = {str(k): str(v) for k, v in spec.env.items()}
    working_dir, run_mounts = container_workdir(spec)
    volumes: dict[str, dict[str, str]] = {
        os.path.abspath(spec.workspace): {"bind": WORKSPACE_MOUNT, "mode": "rw"}, **run_mounts,
    }
    for target, host in ctx.dict_of("docker_mounts").items():
        target = str(target)
        if not target.startswith("/"):
            raise ExecutorError(f"context docker_mounts: container path {target!r} must be absolute")
        host_path = Path(os.path.abspath(os.path.join(spec.workspace, str(host))))  # as the mount table shows it
        if not host_path.exists():
            # Docker would create an empty root-owned folder and the script would run on nothing.
            raise ExecutorError(f"context docker_mounts: host path {host_path} (for {target}) does not exist")
        volumes[str(host_path)] = {"bind": target, "mode": "rw"}
    devices: list[str] = []
    group_add: list[str] = []
    gpu_request = None
    vendor = spec.gpu_vendor.upper()
    if spec.use_gpu_devices and vendor == "AMD":
        devices = ["/dev/kfd:/dev/kfd:rwm", "/dev/dri:/dev/dri:rwm"]
        group_add = ["video"]
    elif spec.use_gpu_devices and vendor == "NVIDIA" and spec.gpus:
        gpu_request = {"device_ids": [str(i) for i in spec.gpus], "capabilities": [["gpu"]]}
        # The container sees only the requested GPUs, numbered from 0.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(spec.gpus)))
    cpus = ctx.get("docker_cpus")
    raw_options = spec.model.raw.get("additional_docker_run_options")
    extra: dict[str, Any] = {}
    if raw_options:
        try:
            extra = run_options.parse(str(raw_options), os.environ).sdk_kwargs()
        except run_options.DockerRunOptionsError as exc:
            raise ExecutorError(f"{spec.model.source} entry '{spec.model.name}': field {exc}") from None
        if "name" in extra or "working_dir" in extra:
            raise ExecutorError(f"{spec.model.source} entry '{spec.model.name}': additional_docker_run_options "
                                "may not set the container's name or working dir")
    command = list(spec.argv)
    if keep_alive:
        command = ["bash", "-c", KEEP_ALIVE_SCRIPT, "mad-keep-alive", *command]
    labels = {
        LABEL_RUN_ID: spec.run_id, LABEL_MODEL: spec.model.name, LABEL_OWNER: owner_label(),
        LABEL_OWNER_START: process_start(os.getpid()),
    }
    if keep_alive:
        labels[LABEL_KEEP_ALIVE] = "1"
    return ContainerPlan(
        name=name, image=image, command=command, working_dir=working_dir, environment=env,
        volumes=volumes, devices=devices, group_add=group_add, gpu_request=gpu_request,
        cpuset_cpus=str(cpus) if cpus not in (None, "") else None, labels=labels, keep_alive=keep_alive,
        extra=extra,
    )


# ------------------------------------------------------------------ build inputs


@dataclass(frozen=True)
class ContextFiles:
    root: Path
    files: tuple[str, ...]  # relative paths (files and folders) sent to the daemon, sorted
    digest: str  # sha256 over paths, kinds and contents


def context_files(root: Path, excludes: Iterable[str] = ()) -> ContextFiles:
    """The build context exactly as it is sent: ``.dockerignore`` applied (Docker SDK rules),
    plus ``excludes`` (our own log and work folders when they lie inside the context)."""
    from docker.utils.build import exclude_paths

    patterns: list[str] = []
    ignore = root / ".dockerignore"
    if ignore.is_file():
        patterns = [ln.strip() for ln in ignore.read_text(encoding="utf-8", errors="replace").splitlines()
                    if ln.strip() and not ln.strip().startswith("#")]
    patterns += list(excludes)
    files = tuple(sorted(exclude_paths(str(root), patterns, dockerfile=DOCKERFILE_IN_TAR)))
    h = hashlib.sha256()
    for rel in files:
        full = root / rel
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
        if full.is_symlink():
            h.update(b"L" + os.readlink(full).encode("utf-8", "surrogateescape"))
        elif full.is_file():
            h.update(b"F" + (b"x" if os.access(full, os.X_OK) else b"-"))
            with open(full, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        else:
            h.update(b"D")
        h.update(b"\0")
    return ContextFiles(root, files, h.hexdigest())


def build_hash(dockerfile_text: str, context_digest: str, build_args: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    h.update(HASH_SCHEMA.encode() + b"\0")
    h.update(dockerfile_text.encode("utf-8", "surrogateescape") + b"\0")
    h.update(context_digest.encode() + b"\0")
    h.update(json.dumps(dict(sorted(build_args.items())), sort_keys=True).encode())
    return h.hexdigest()


# ------------------------------------------------------------------ output


class LineSplitter:
    """Bytes in arbitrary chunks -> text lines, none longer than ``max_line`` bytes."""

    def __init__(self, emit: Callable[[str], None], max_line: int = MAX_LINE) -> None:
        self.emit = emit
        self.max_line = max_line
        self.buf = b""

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        while True:
            nl = self.buf.find(b"\n")
            if nl == -1 or nl >= self.max_line:
                if len(self.buf) < self.max_line:
                    return
                cut = self.max_line
            else:
                cut = nl + 1
            line, self.buf = self.buf[:cut], self.buf[cut:]
            self.emit(line.decode("utf-8", errors="replace"))

    def flush(self) -> None:
        if self.buf:
            line, self.buf = self.buf, b""
            self.emit(line.decode("utf-8", errors="replace"))


class BuildLog:
    """The build log file plus a bounded tail of it, for failure reasons."""

    def __init__(self, path: Path, secrets: Iterable[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.secrets = set(secrets)
        self._fh = open(path, "w", encoding="utf-8", errors="replace")
        from collections import deque

        self.tail: Any = deque(maxlen=BUILD_TAIL_LINES)

    def write(self, text: str) -> None:
        text = registry.redact(text, self.secrets)
        for line in text.splitlines():
            if line.strip():
                self._fh.write(line + "\n")
                self.tail.append(line)
        self._fh.flush()

    def note(self, text: str) -> None:
        self.write(f"[pytest-madengine] {text}")

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


class ContainerWatch:
    """The two threads around a running container: one copies its output into the sink line by
    line, one blocks in ``wait`` (none with keep-alive, whose container never exits)."""

    def __init__(self, client: Any, cid: str, sink: OutputSink, *, keep_alive: bool) -> None:
        self.client, self.cid, self.sink, self.keep_alive = client, cid, sink, keep_alive
        self.stop = threading.Event()
        self.marker_seen = threading.Event()
        self.streams: list[Any] = []
        self.reader = threading.Thread(target=self._read, daemon=True, name="mad-docker-logs")
        self.reader.start()
        self.waiter: threading.Thread | None = None
        self.waited: dict[str, Any] = {}
        if not keep_alive:
            self.start_waiter()

    def _emit(self, line: str) -> None:
        if self.stop.is_set():
            return
        if self.keep_alive and line.startswith(KEEP_ALIVE_MARK):
            self.marker_seen.set()
        self.sink.write(line)

    def _read(self) -> None:
        splitter = LineSplitter(self._emit)
        try:
            stream = self.client.api.logs(self.cid, stream=True, follow=True, stdout=True, stderr=True)
            self.streams.append(stream)
            for chunk in stream:
                if self.stop.is_set():
                    break
                splitter.feed(chunk)
            splitter.flush()
        except Exception:  # noqa: BLE001 - a lost daemon is reported by the waiter / main loop
            pass

    def start_waiter(self) -> None:
        self.waited = {}
        waited = self.waited

        def wait() -> None:
            try:
                waited["result"] = self.client.api.wait(self.cid, timeout=None)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                waited["exception"] = exc

        self.waiter = threading.Thread(target=wait, daemon=True, name="mad-docker-wait")
        self.waiter.start()

    def wait_slice(self, seconds: float) -> dict[str, Any] | None:
        assert self.waiter is not None
        self.waiter.join(seconds)
        return None if self.waiter.is_alive() else self.waited

    def finish(self, drain_s: float) -> None:
        self.reader.join(drain_s)
        self.stop.set()
        for s in self.streams:
            try:
                s.close()
            except Exception:  # noqa: BLE001
                pass


class BuildFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Interrupted(Exception):
    pass


class StreamTimedOut(Exception):
    """A build or pull stream outlived its deadline (the daemon may still be working on it)."""


@dataclass
class ImageResult:
    image: str
    image_id: str
    built: bool
    build_duration: float


# ------------------------------------------------------------------ the executor


class DockerExecutor(Executor):
    name = "docker"

    def __init__(self, options: Any, context: Any, run_id: str) -> None:
        self.options = options
        self.context = context
        self.run_id = run_id
        # Set by the session to show progress (pulls, build steps, keep-alive hints) on the terminal.
        self.progress: Callable[[str], None] | None = None
        self._prepared: dict[str, ImageResult] = {}  # images prepare() built, by model
        # xdist workers of one run share PYTEST_XDIST_TESTRUNUID; with --mad-rebuild an image
        # built by a sibling worker after we started counts as rebuilt (the time check keeps a
        # pytest started inside an xdist worker, which inherits the variable, from matching).
        self.build_session = os.environ.get("PYTEST_XDIST_TESTRUNUID") or run_id
        self.started = time.time()
        self._client: Any = None
        self._down: tuple[float, str] | None = None  # (when, why) the daemon last failed a ping
        self._lock = threading.RLock()
        self._failed: dict[str, tuple[str, str]] = {}  # build hash -> (reason, model): same inputs fail alike
        self._context_cache: dict[tuple[str, tuple[str, ...]], ContextFiles] = {}
        self._names: set[str] = set()
        self.swept: list[str] = []
        if getattr(options, "dry_run", False):
            return  # a dry run plans: it connects to nothing and removes nothing
        try:
            self._connect()
            self.swept = self.sweep_orphans()
        except ExecutorError:
            pass  # said again, on one line, by every model that needs the daemon

    # -- connection

    @classmethod
    def daemon_answers(cls) -> tuple[bool, str]:
        """Whether a Docker daemon answers a ping within a few seconds, and a word on it."""
        try:
            import docker

            client = docker.from_env(timeout=PING_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any failure means "no daemon"
            return False, daemon_error(exc).args[0]
        try:
            client.ping()
            version = client.api.version().get("Version", "?")
            return True, f"{docker_host()}, Docker {version}"
        except Exception as exc:  # noqa: BLE001
            return False, daemon_error(exc).args[0]
        finally:
            client.close()

    def _connect(self) -> Any:
        with self._lock:
            if self._client is not None:
                return self._client
            # A short ping first: a daemon that accepts but never answers costs seconds, not minutes.
            down = self._ping_fresh()
            if down is not None:
                raise ExecutorError(f"Docker daemon at {docker_host()} is not answering: {down}")
            try:
                import docker

                self._client = docker.from_env(timeout=API_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001
                raise daemon_error(exc) from None
            return self._client

    def _client_or_problem(self) -> Any:
        """The client, after checking (on a new, short-timeout connection) that the daemon answers."""
        if self._client is not None:
            down = self._ping_fresh()
            if down is not None:
                self._drop_client()
                raise ExecutorError(f"Docker daemon at {docker_host()} is not answering: {down}")
            return self._client
        return self._connect()

    def _drop_client(self) -> None:
        with self._lock:
            if self._client is not None:
                try:
                    self._client.close()
                except Exception:  # noqa: BLE001
                    pass
                self._client = None

    def _say(self, text: str, sink: OutputSink | None = None) -> None:
        if sink is not None:
            sink.note(text)
        if self.progress is not None:
            try:
                self.progress(text)
            except Exception:  # noqa: BLE001 - a broken terminal must not fail the run
                pass

    def describe(self) -> str:
        return f"docker ({docker_host()})"

    def uses_dockerfiles(self, context: Any) -> bool:
        return not context.get("MAD_CONTAINER_IMAGE")

    # -- plan

    def plan(self, spec: RunSpec) -> DockerPlan:
        build = plan_build(spec)
        container = plan_container(spec, build.image, name=container_name(build.image),
                                   keep_alive=bool(self.options.keep_alive))
        return DockerPlan(spec=spec, build=build, container=container, rebuild=bool(self.options.rebuild))

    # -- run

    def prepare(self, plan: Plan, sink: OutputSink, cancel: Cancel) -> RunOutcome | None:
        """Build (or find) the image now, so that multi-node peers meet after the build, not
        before it. None when ready; otherwise the failed outcome, which run() would give too."""
        assert isinstance(plan, DockerPlan)
        spec, build = plan.spec, plan.build
        try:
            client = self._client_or_problem()
            log_path = sink.log_path.with_name(sink.log_path.name.removesuffix(".log") + ".build.log")
            img = self.ensure_image(client, spec, build, log_path, sink, cancel)
        except BuildFailed as exc:
            return RunOutcome(None, 0.0, problem=exc.reason, image=build.image)
        except Interrupted:
            return RunOutcome(None, 0.0, interrupted=True, image=build.image)
        except ExecutorError as exc:
            return RunOutcome(None, 0.0, problem=str(exc), image=build.image)
        except Exception as exc:  # noqa: BLE001
            if _is_connection_error(exc):
                self._drop_client()
                return RunOutcome(None, 0.0, problem=str(daemon_error(exc)), image=build.image)
            raise
        if img.built:
            self._prepared[spec.model.name] = img
        return None

    def run(self, plan: Plan, sink: OutputSink, cancel: Cancel) -> RunOutcome:
        assert isinstance(plan, DockerPlan)
        spec, build = plan.spec, plan.build
        props: dict[str, Any] = {}
        facts: dict[str, Any] = {"image": build.image, "base_docker": build.base_docker,
                                 "dockerfile": self._rel(Path(build.dockerfile), spec.workspace) if build.dockerfile else ""}
        name = self._unique_name(plan.container.name)
        container_plan = dataclasses.replace(plan.container, name=name)
        try:
            client = self._client_or_problem()
        except ExecutorError as exc:
            return RunOutcome(None, 0.0, problem=str(exc), properties=props, **facts)
        if self.swept:
            self._say(f"removed {len(self.swept)} container(s) left by a killed pytest: {', '.join(self.swept)}", sink)
            self.swept = []
        build_log_path = sink.log_path.with_name(sink.log_path.name[: -len(".log")] + ".build.log") \
            if sink.log_path.name.endswith(".log") else sink.log_path.with_name(sink.log_path.name + ".build.log")
        props["build_log"] = str(build_log_path)
        if build.dockerfile:
            stem = dockerfiles.dockerfile_stem(Path(build.dockerfile))
            for phase, target in (("build", build_log_path), ("run", sink.log_path), ("", sink.log_path)):
                livelogs.link(spec.workspace, livelogs.live_log_name(spec.model.name, stem, phase), target)
        try:
            img = self.ensure_image(client, spec, build, build_log_path, sink, cancel)
        except BuildFailed as exc:
            return RunOutcome(None, 0.0, problem=exc.reason, properties=props, **facts)
        except Interrupted:
            return RunOutcome(None, 0.0, interrupted=True, properties=props, **facts)
        except ExecutorError as exc:
            return RunOutcome(None, 0.0, problem=str(exc), properties=props, **facts)
        except Exception as exc:  # noqa: BLE001
            if _is_connection_error(exc):
                self._drop_client()
                return RunOutcome(None, 0.0, problem=str(daemon_error(exc)), properties=props, **facts)
            raise
        facts["docker_sha"] = img.image_id
        props["image_reused"] = not img.built
        prepared = self._prepared.pop(spec.model.name, None)
        if prepared is not None and not img.built:  # built by prepare(), just before the rendezvous
            img = prepared
        props["container"] = name
        outcome = self.run_container(client, spec, container_plan, sink, cancel)
        outcome.build_duration = img.build_duration
        outcome.properties = {**props, **outcome.properties}
        return dataclasses.replace(outcome, **facts)

    @staticmethod
    def _rel(path: Path, root: Path) -> str:
        try:
            return str(path.relative_to(root))
        except ValueError:
            return str(path)

    def _unique_name(self, base: str) -> str:
        with self._lock:
            name, n = base, 1
            while name in self._names:
                n += 1
                name = f"{base}_{n}"
            self._names.add(name)
            return name

    # -- image

    def _excludes(self, root: Path) -> list[str]:
        # Never sent to the daemon: registry passwords (a COPY . would put them in a layer) and
        # version-control data, wherever the context starts.
        out = [registry.CREDENTIAL_FILE, ".git"]
        workspace = Path(self.options.root).resolve()
        for p in (Path(self.options.log_dir), Path(self.options.work_dir), workspace / registry.CREDENTIAL_FILE):
            try:
                rel = p.resolve().relative_to(root)
            except ValueError:
                continue
            if str(rel) not in ("", ".", *out):
                out.append(str(rel))
        if root == workspace:
            out.append("perf.csv")  # written by every run: would rebuild every time
        return out

    def _context(self, root: Path) -> ContextFiles:
        excludes = tuple(self._excludes(root))
        key = (str(root), excludes)
        with self._lock:
            if key not in self._context_cache:
                self._context_cache[key] = context_files(root, excludes)
            return self._context_cache[key]

    @contextmanager
    def _build_lock(self, digest: str) -> Iterator[None]:
        folder = Path(self.options.work_dir) / ".build-locks"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{digest[:32]}.lock"
        with self._lock, open(path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _image_labels(self, client: Any, image: str) -> tuple[str, dict[str, str]] | None:
        from docker.errors import ImageNotFound

        try:
            attrs = client.api.inspect_image(image)
        except ImageNotFound:
            return None
        return attrs.get("Id", ""), (attrs.get("Config") or {}).get("Labels") or {}

    def _acceptable(self, labels: Mapping[str, str], digest: str) -> bool:
        if labels.get(LABEL_HASH) != digest:
            return False
        # --mad-rebuild: only an image built by this very run (any of its xdist workers) counts
        if not self.options.rebuild:
            return True
        session, _, when = labels.get(LABEL_BUILD_SESSION, "").partition("@")
        try:
            built_at = float(when)
        except ValueError:
            return False
        return session == self.build_session and built_at >= self.started

    def _reusable(self, client: Any, image: str, digest: str) -> tuple[str, str] | None:
        """(image id, how) of an image this build may reuse: the tag itself, or any image with
        the same build hash (models sharing a Dockerfile), which is then tagged ``image``."""
        found = self._image_labels(client, image)
        if found is not None and self._acceptable(found[1], digest):
            return found[0], f"image {image} is up to date (build hash {digest[:16]})"
        for other in client.api.images(filters={"label": f"{LABEL_HASH}={digest}"}):
            if self._acceptable(other.get("Labels") or {}, digest):
                client.api.tag(other["Id"], image, tag="latest", force=True)
                if found is not None:
                    self._drop_replaced(client, found[0], None)
                source = next((t for t in other.get("RepoTags") or [] if t != "<none>:<none>"), other["Id"][:19])
                return other["Id"], f"tagged {source} as {image}: same build inputs (build hash {digest[:16]})"
        return None

    def _fail_fast(self, digest: str) -> None:
        if digest in self._failed:
            reason, first = self._failed[digest]
            raise BuildFailed(f"{reason}\n(the same build inputs failed earlier in this session, "
                              f"for model '{first}': not retried)")

    def ensure_image(self, client: Any, spec: RunSpec, build: BuildPlan, log_path: Path,
                     sink: OutputSink, cancel: Cancel) -> ImageResult:
        if build.prebuilt:
            return self._ensure_prebuilt(client, spec, build, log_path, sink, cancel)
        text = Path(build.dockerfile).read_text(encoding="utf-8", errors="replace")
        root = Path(build.context_dir)
        if not root.is_dir():
            raise ExecutorError(f"model '{spec.model.name}': build context {root} is not a folder "
                                "(models.json field 'dockercontext', or ./docker of the workspace)")
        ctx_files = self._context(root)
        digest = build_hash(text, ctx_files.digest, build.build_args)
        self._fail_fast(digest)
        reuse = self._reusable(client, build.image, digest)
        if reuse is None:
            # One build per set of inputs at a time, across xdist workers; the loser reuses.
            with self._build_lock(digest):
                self._fail_fast(digest)
                reuse = self._reusable(client, build.image, digest)
                if reuse is None:
                    try:
                        return self._build(client, spec, build, text, ctx_files, digest, log_path, sink, cancel)
                    except BuildFailed as exc:
                        self._failed[digest] = (exc.reason, spec.model.name)
                        raise
        image_id, how = reuse
        log = BuildLog(log_path, ())
        try:
            log.note(f"{how}: no build")
        finally:
            log.close()
        sink.note(f"image {build.image}: reused ({image_id[:19]}), no build")
        return ImageResult(build.image, image_id, False, 0.0)

    def _secrets(self, spec: RunSpec) -> tuple[dict[str, Any], set[str]]:
        entries, _ = registry.load_credentials(spec.workspace)
        return entries, registry.secrets_of(entries)

    def _build(self, client: Any, spec: RunSpec, build: BuildPlan, text: str, ctx_files: ContextFiles,
               digest: str, log_path: Path, sink: OutputSink, cancel: Cancel) -> ImageResult:
        from docker.errors import APIError
        from docker.utils.build import create_archive

        entries, secrets = self._secrets(spec)
        limit = build_timeout(spec)
        log = BuildLog(log_path, secrets)
        start = time.monotonic()
        deadline = start + limit
        stop = threading.Event()
        try:
            why = "--mad-rebuild" if self.options.rebuild else "inputs changed or no image yet"
            log.note(f"building {build.image} from {build.dockerfile} (context {build.context_dir}, "
                     f"build hash {digest[:16]}, {why})")
            self._say(f"{spec.model.name}: building image {build.image} ({why}); log {log_path}", sink)
            if build.base_docker and "$" not in build.base_docker:
                self._ensure_base(client, spec, build, entries, secrets, log, sink, cancel, deadline)
            # The legacy builder turns each label into a step of its own: two, no more.
            labels = {LABEL_HASH: digest, LABEL_BUILD_SESSION: f"{self.build_session}@{time.time():.3f}"}
            previous = self._image_labels(client, build.image)
            tar = create_archive(str(ctx_files.root), files=list(ctx_files.files),
                                 extra_files=[(DOCKERFILE_IN_TAR, text)])
            result: dict[str, Any] = {}

            def consume() -> None:
                try:
                    stream = client.api.build(
                        fileobj=tar, custom_context=True, dockerfile=DOCKERFILE_IN_TAR, tag=build.image,
                        buildargs=dict(build.build_args), labels=labels, rm=True, forcerm=True, pull=False,
                        nocache=bool(self.options.rebuild), decode=True, network_mode="host",
                    )
                    for chunk in stream:
                        if stop.is_set():  # timed out or cancelled: nobody reads this any more
                            break
                        if "stream" in chunk:
                            out = str(chunk["stream"])
                            log.write(out)
                            for line in out.splitlines():
                                if re.match(r"^Step \d+/\d+ :", line) and f"LABEL {LABEL}." not in line:
                                    self._say(f"{build.image}: {registry.redact(line, secrets)[:200]}")
                        elif "error" in chunk:
                            result["error"] = str((chunk.get("errorDetail") or {}).get("message") or chunk["error"])
                            log.write(result["error"])
                        elif "aux" in chunk and isinstance(chunk["aux"], dict) and chunk["aux"].get("ID"):
                            result["id"] = chunk["aux"]["ID"]
                        elif "status" in chunk:
                            log.write(str(chunk["status"]))
                except APIError as exc:
                    result["error"] = api_message(exc)
                    log.write(result["error"])
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                    result["exception"] = exc
                finally:
                    tar.close()

            self._in_thread(consume, cancel, deadline, stop)
            if "exception" in result:
                raise result["exception"]
            if "error" in result:
                raise BuildFailed(self._build_reason(build, result["error"], log))
            found = self._image_labels(client, build.image)
            if found is None or found[1].get(LABEL_HASH) != digest:
                raise BuildFailed(self._build_reason(build, "the build ended but produced no tagged image", log))
            duration = time.monotonic() - start
            if previous is not None and previous[0] != found[0]:
                self._drop_replaced(client, previous[0], log)
            log.note(f"built {build.image} ({found[0][:19]}) in {duration:.1f} s")
            sink.note(f"image {build.image}: built in {duration:.1f} s ({found[0][:19]}); build log {log_path}")
            return ImageResult(build.image, found[0], True, duration)
        except StreamTimedOut:
            log.note(f"timed out after {limit:g} s (context key docker_build_timeout): stopped waiting; "
                     "the build may go on in the Docker daemon, orphaned, until it ends")
            raise BuildFailed(f"image build timed out after {limit:g} s ({build.image}; context key "
                              f"docker_build_timeout); build log {log_path}") from None
        finally:
            stop.set()
            log.close()

    def _drop_replaced(self, client: Any, image_id: str, log: BuildLog | None) -> None:
        """Remove the image this build replaced when it is ours and nothing names it any more."""
        try:
            attrs = client.api.inspect_image(image_id)
            if attrs.get("RepoTags") or LABEL_HASH not in ((attrs.get("Config") or {}).get("Labels") or {}):
                return
            client.api.remove_image(image_id)
            if log is not None:
                log.note(f"removed the image it replaces ({image_id[:19]})")
        except Exception:  # noqa: BLE001 - still used by a container, or already gone: keep it
            pass

    def _build_reason(self, build: BuildPlan, error: str, log: BuildLog) -> str:
        lines = list(log.tail)[-10:]
        text = f"docker build of {build.image} failed: {' '.join(error.split())[:300]}"
        text += f"\nlast lines of {log.path}:\n" + "\n".join(f"  {ln}" for ln in lines)
        return registry.redact(text, log.secrets)

    @staticmethod
    def _in_thread(fn: Callable[[], None], cancel: Cancel, deadline: float | None = None,
                   stop: threading.Event | None = None) -> None:
        """Run ``fn`` in a thread; return when it ends, raise Interrupted on cancel and
        StreamTimedOut past ``deadline`` (time.monotonic()). The SDK's streams have no timeout
        of their own, so the thread is left to end with the stream (or with pytest); ``stop``
        is set to tell it to stop reporting."""
        t = threading.Thread(target=fn, daemon=True, name="mad-docker-stream")
        t.start()
        until = process.Deadline(None if deadline is None else deadline - time.monotonic())
        while t.is_alive():
            t.join(until.slice(SLICE_S))
            if not t.is_alive():
                break
            why = process.stop_reason(cancel, until)
            if why is not None:
                if stop is not None:
                    stop.set()
                if why == process.CANCELLED:
                    raise Interrupted()
                raise StreamTimedOut()

    def _ensure_base(self, client: Any, spec: RunSpec, build: BuildPlan, entries: Mapping[str, Any],
                     secrets: set[str], log: BuildLog, sink: OutputSink, cancel: Cancel,
                     deadline: float | None = None) -> None:
        if self._image_labels(client, build.base_docker) is not None:
            log.note(f"base image {build.base_docker} is present locally")
            return
        self._pull(client, build.base_docker, entries, secrets, log, sink, cancel, what="base image",
                   deadline=deadline)

    def _pull(self, client: Any, ref: str, entries: Mapping[str, Any], secrets: set[str], log: BuildLog,
              sink: OutputSink, cancel: Cancel, what: str, deadline: float | None = None) -> None:
        from docker.errors import APIError
        from docker.utils import parse_repository_tag

        host = registry.registry_of(ref)
        cred = registry.credential_for(host, entries)
        auth = None
        if cred is not None:
            log.note(f"logging in to {host} as {cred.username} ({cred.source})")
            try:
                client.login(username=cred.username, password=cred.password,
                             registry=registry.login_registry(host), reauth=True)
            except APIError as exc:
                raise BuildFailed(registry.redact(
                    f"login to {host} as {cred.username} ({cred.source}) failed: {api_message(exc)}", secrets)) from None
            auth = {"username": cred.username, "password": cred.password}
        self._say(f"pulling {what} {ref} from {host}" + (f" as {cred.username}" if cred else ""), sink)
        repo, tag = parse_repository_tag(ref)
        result: dict[str, Any] = {}
        last = {"t": 0.0}
        stop = threading.Event()

        def consume() -> None:
            try:
                for ev in client.api.pull(repo, tag=tag or "latest", stream=True, decode=True, auth_config=auth):
                    if stop.is_set():  # timed out or cancelled: nobody reads this any more
                        break
                    if "error" in ev:
                        result["error"] = str((ev.get("errorDetail") or {}).get("message") or ev["error"])
                        continue
                    status, layer = str(ev.get("status", "")), str(ev.get("id", ""))
                    line = f"{layer}: {status} {ev.get('progress', '')}".strip(": ").strip()
                    if status in ("Downloading", "Extracting"):
                        now = time.monotonic()
                        if now - last["t"] >= 1.0:
                            last["t"] = now
                            self._say(f"{ref}: {line}")
                        continue
                    log.write(line)
                    self._say(f"{ref}: {line}")
            except APIError as exc:
                result["error"] = api_message(exc)
            except BaseException as exc:  # noqa: BLE001
                result["exception"] = exc

        self._in_thread(consume, cancel, deadline, stop)
        if "exception" in result:
            raise result["exception"]
        if "error" in result:
            hint = "" if cred else (f"; no credentials for {host} in {spec_cred_hint(host)}")
            raise BuildFailed(registry.redact(f"cannot pull {what} {ref}: {result['error']}{hint}", secrets))
        log.note(f"pulled {ref}")

    def _ensure_prebuilt(self, client: Any, spec: RunSpec, build: BuildPlan, log_path: Path,
                         sink: OutputSink, cancel: Cancel) -> ImageResult:
        found = self._image_labels(client, build.image)
        entries, secrets = self._secrets(spec)
        limit = build_timeout(spec)
        log = BuildLog(log_path, secrets)
        try:
            log.note(f"MAD_CONTAINER_IMAGE={build.image}: no build")
            start = time.monotonic()
            if found is None:
                self._pull(client, build.image, entries, secrets, log, sink, cancel, what="image",
                           deadline=start + limit)
                found = self._image_labels(client, build.image)
            if found is None:
                raise BuildFailed(f"image {build.image} (MAD_CONTAINER_IMAGE) is not available")
            return ImageResult(build.image, found[0], False, time.monotonic() - start)
        except StreamTimedOut:
            log.note(f"timed out after {limit:g} s (context key docker_build_timeout): stopped waiting; "
                     "the pull may go on in the Docker daemon until it ends")
            raise BuildFailed(f"image build timed out after {limit:g} s (pulling {build.image}; context key "
                              f"docker_build_timeout); log {log_path}") from None
        finally:
            log.close()

    # -- container

    def run_container(self, client: Any, spec: RunSpec, plan: ContainerPlan, sink: OutputSink,
                      cancel: Cancel) -> RunOutcome:
        from docker.errors import APIError

        exit_file = spec.run_dir / EXIT_CODE_FILE
        if plan.keep_alive:
            exit_file.unlink(missing_ok=True)
        sink.note(f"container {plan.name}: image {plan.image}, command {plan.command}, cwd {plan.working_dir}")
        start = time.monotonic()
        base_name = plan.name
        while True:
            try:
                container = client.containers.run(**plan.run_kwargs())
                break
            except APIError as exc:
                if _name_taken(exc) and plan.name.rpartition("_")[2] != str(MAX_NAME_TRIES):
                    # madengine's name is held by a live container (another checkout, a kept one):
                    # never remove it; take the next free suffix and say so.
                    tries = 1 if plan.name == base_name else int(plan.name.rpartition("_")[2])
                    taken = plan.name
                    plan = dataclasses.replace(plan, name=f"{base_name}_{tries + 1}")
                    sink.note(f"container name {taken} is held by another container; using {plan.name}")
                    continue
                if not _name_taken(exc):
                    self._remove(client, plan.name)
                return RunOutcome(None, 0.0, problem=f"cannot start container {plan.name}: {api_message(exc)}")
            except Exception as exc:  # noqa: BLE001
                if _is_connection_error(exc):
                    self._drop_client()
                    return RunOutcome(None, 0.0, problem=str(daemon_error(exc)))
                raise
        cid = container.id
        # The duration counts from creating the container; the timeout from its start.
        until = process.Deadline(spec.timeout)
        watch = ContainerWatch(client, cid, sink, keep_alive=plan.keep_alive)
        timed_out = interrupted = False
        exit_code: int | None = None
        problem = ""
        file_seen_at: float | None = None
        restarts = 0
        while True:
            if not plan.keep_alive:
                done = watch.wait_slice(SLICE_S)
                if done is not None:
                    if "result" in done:
                        exit_code = done["result"].get("StatusCode")
                        break
                    failure = done["exception"]
                    if isinstance(failure, APIError):
                        problem = f"lost container {plan.name}: {api_message(failure)}"
                        break
                    # The wait connection broke: a dead daemon, or only the connection?
                    down = self._ping_fresh()
                    if down is None and restarts < 3:
                        restarts += 1
                        watch.start_waiter()
                        continue
                    problem = f"Docker daemon at {docker_host()} is not answering: {down or short_reason(failure)}"
                    break
            else:
                time.sleep(SLICE_S)
                if exit_file.exists():
                    file_seen_at = file_seen_at or time.monotonic()
                    if watch.marker_seen.is_set() or time.monotonic() - file_seen_at > 2.0:
                        try:
                            exit_code = int(exit_file.read_text().strip())
                        except (OSError, ValueError):
                            exit_code = None
                        break
                elif not watch.reader.is_alive():
                    # The log stream ended before the wrapper wrote the code: the container
                    # stopped (or the daemon went away).
                    state = self._state(client, cid)
                    if state is None:
                        problem = f"Docker daemon at {docker_host()} is not answering: {self._ping_fresh() or 'lost the container'}"
                        break
                    if not state.get("Running"):
                        exit_code = state.get("ExitCode")
                        break
            why = process.stop_reason(cancel, until)
            if why is not None:
                interrupted, timed_out = why == process.CANCELLED, why == process.TIMED_OUT
                break
        duration = time.monotonic() - start
        daemon_gone = problem.startswith("Docker daemon")
        if daemon_gone:
            self._drop_client()
        oom = False
        if not (timed_out or interrupted or daemon_gone):
            state = self._state(client, cid) or {}
            oom = bool(state.get("OOMKilled"))
        if timed_out or interrupted:
            self._remove(client, cid)  # stops the log stream too
        # Let the reader drain what the container wrote before it ended (bounded).
        watch.finish(LOG_DRAIN_S if not (timed_out or interrupted or plan.keep_alive or daemon_gone) else 1.0)
        if oom:
            problem = "OOM-killed (the container hit its memory limit)"
        props: dict[str, Any] = {"container": plan.name}
        if plan.keep_alive and not (timed_out or interrupted or problem):
            self._say(f"container {plan.name} kept alive; enter it with: docker exec -it {plan.name} bash", sink)
            props["keep_alive"] = f"docker exec -it {plan.name} bash"
        elif not (timed_out or interrupted or daemon_gone):
            self._remove(client, cid)
        return RunOutcome(exit_code, duration, timed_out=timed_out, interrupted=interrupted, problem=problem,
                          properties=props)

    def _ping_fresh(self) -> str | None:
        """None when the daemon answers a ping on a new connection, else why not (one line).
        A failure is remembered for DOWN_MEMORY_S, so that a run of many models against a dead
        daemon fails each at once instead of waiting out a ping timeout per model."""
        if self._down is not None and time.monotonic() - self._down[0] < DOWN_MEMORY_S:
            return self._down[1]
        reason = self._ping_once()
        self._down = None if reason is None else (time.monotonic(), reason)
        return reason

    @staticmethod
    def _ping_once() -> str | None:
        try:
            import docker

            c = docker.from_env(timeout=PING_TIMEOUT_S)
            try:
                c.ping()
            finally:
                c.close()
            return None
        except Exception as exc:  # noqa: BLE001
            return short_reason(exc)

    def _state(self, client: Any, cid: str) -> dict[str, Any] | None:
        try:
            return client.api.inspect_container(cid).get("State") or {}
        except Exception:  # noqa: BLE001
            return None

    def _remove(self, client: Any, cid: str) -> bool:
        from docker.errors import NotFound

        try:
            client.api.remove_container(cid, force=True, v=True)
            return True
        except NotFound:
            return True
        except Exception:  # noqa: BLE001 - close() and the next session's sweep try again
            return False

    # -- cleanup

    def _ours(self, client: Any, label: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = client.api.containers(all=True, filters={"label": label})
        return found

    def sweep_orphans(self) -> list[str]:
        """Remove containers whose owning pytest (on this host) is gone; keep-alive ones stay."""
        client = self._connect()
        host = socket.gethostname()
        ns = pid_namespace()
        removed: list[str] = []
        try:
            listed = self._ours(client, LABEL_OWNER)
        except Exception:  # noqa: BLE001
            return removed
        for c in listed:
            labels = c.get("Labels") or {}
            if labels.get(LABEL_KEEP_ALIVE) == "1":
                continue
            owner = parse_owner(labels.get(LABEL_OWNER, ""))
            if owner is None or owner[0] != host:
                continue
            # Another pid namespace (a pytest in a container with the host's name): its pids
            # mean nothing here. Labels without a namespace are judged by the pid, as before.
            if owner[2] is not None and owner[2] != ns:
                continue
            pid = owner[1]
            alive = _pid_alive(pid) and (not labels.get(LABEL_OWNER_START)
                                         or process_start(pid) == labels.get(LABEL_OWNER_START))
            if alive:
                continue
            if self._remove(client, c["Id"]):
                removed.append(((c.get("Names") or ["?"])[0]).lstrip("/"))
        return removed

    def close(self) -> None:
        """Remove every container of this run that is not kept alive, and those of processes
        that died during it (an xdist worker killed mid-run). Always on a new connection, after
        a short ping: a daemon that blipped during the run (client dropped) still gets asked."""
        self._drop_client()
        self._down = None  # what an earlier ping said is stale now
        try:
            client = self._connect()
        except ExecutorError:  # no daemon at the end: nothing we can remove
            return
        try:
            try:
                self.sweep_orphans()
            except Exception:  # noqa: BLE001 - still remove our own below
                pass
            try:
                for c in self._ours(client, f"{LABEL_RUN_ID}={self.run_id}"):
                    if (c.get("Labels") or {}).get(LABEL_KEEP_ALIVE) != "1":
                        self._remove(client, c["Id"])
            except Exception:  # noqa: BLE001 - the daemon went away again: the next sweep removes them
                pass
        finally:
            self._drop_client()


MAX_NAME_TRIES = 50


def _name_taken(exc: BaseException) -> bool:
    """A create refused because another container has the name (HTTP 409)."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status == 409 and "already in use" in api_message(exc)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def spec_cred_hint(host: str) -> str:
    if registry.is_hub(host):
        return "credential.json ('dockerhub') or MAD_DOCKERHUB_USER/MAD_DOCKERHUB_PASSWORD"
    return f"credential.json (an entry '{host}' with username and password)"
