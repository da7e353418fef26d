"""The Docker run as plain data: ``plan(spec)`` turns a ``RunSpec`` into a ``DockerPlan`` (the
Dockerfile chosen, the image name, build context and args, the container's command, mounts,
devices, labels), computed without touching the daemon; the other modules of this package
carry it out.

Every container and image carries ``org.pytest-madengine.*`` labels, so what we made can be
found and removed by label, never by name pattern.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_madengine.errors import ExecutorError
from pytest_madengine.executors import secretenv
from pytest_madengine.executors.base import Plan, RunSpec, render_env, shown_value
from pytest_madengine.executors.docker import dockerfiles, registry
from pytest_madengine.models import run_options as run_options

LABEL = "org.pytest-madengine"
LABEL_HASH = f"{LABEL}.build-hash"
LABEL_BUILD_SESSION = f"{LABEL}.build-session"  # "<run>@<unix time of the build>", for --mad-rebuild
LABEL_RUN_ID = f"{LABEL}.run-id"
LABEL_MODEL = f"{LABEL}.model"
LABEL_OWNER = f"{LABEL}.owner"  # hostname:pid[:pid-namespace inode] of the pytest that started it
LABEL_OWNER_START = f"{LABEL}.owner-start"  # that pid's start time, so a reused pid is not taken for it
LABEL_KEEP_ALIVE = f"{LABEL}.keep-alive"

WORKSPACE_MOUNT = "/myworkspace"
EXIT_CODE_FILE = ".mad-exit-code"  # keep-alive: the script's exit code, written by the wrapper
KEEP_ALIVE_MARK = "[pytest-madengine] script exited with status"
BUILD_TIMEOUT_S = 3600.0  # default limit of an image build (base pull included): docker_build_timeout
# dockerd's own copy of a container's output (for `docker logs`), kept small: we read the output
# attached, and an unbounded json-file log would let a runaway model fill the Docker host's disk.
LOG_DRIVER = "json-file"
LOG_OPTIONS = {"max-size": "16m", "max-file": "2"}

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


@dataclass(frozen=True)
class BuildPlan:
    image: str
    dockerfile: str  # absolute path of the Dockerfile chosen ("" with MAD_CONTAINER_IMAGE)
    dockerfile_header: dict[str, Any] | None
    context_dir: str
    build_args: dict[str, str]
    base_docker: str
    base_registry: str  # registry host of base_docker ("docker.io" for Docker Hub)
    prebuilt: bool = False  # MAD_CONTAINER_IMAGE, --mad-use-image, --mad-manifest: run this image, build nothing
    source: str = "MAD_CONTAINER_IMAGE"  # where a prebuilt image comes from, for messages
    digest: str = ""  # --mad-manifest: the digest (or image id) the image must have
    build_hash: str = ""  # --mad-manifest: the inputs' hash it was built from
    arch: str = ""  # --mad-target-archs: the GPU architecture this image is built for


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
    # appends them to its `docker run` line (so they win over what comes before). Its -e
    # variables are already in environment / secret_env.
    extra: dict[str, Any] = field(default_factory=dict)
    # Secret variables (``masking``): never in the container's config, but in a 0600 file in
    # the run folder that the command's first part (``secretenv.loader``) sources and deletes.
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)
    log_driver: str = LOG_DRIVER
    log_options: dict[str, str] = field(default_factory=lambda: dict(LOG_OPTIONS))

    def run_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``client.containers.create(...)``."""
        from docker.types import DeviceRequest, LogConfig

        kw: dict[str, Any] = {
            "image": self.image, "command": self.command, "name": self.name, "detach": True,
            "working_dir": self.working_dir, "environment": self.environment, "volumes": self.volumes,
            "network_mode": self.network_mode, "ipc_mode": self.ipc_mode, "user": self.user,
            "cap_add": self.cap_add, "security_opt": self.security_opt, "labels": self.labels,
            "stdin_open": False, "tty": False,
            "log_config": LogConfig(type=self.log_driver, config=dict(self.log_options)),
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
            out.append(f"  image: {b.image} ({b.source}: run as given, nothing built"
                       + (f"; pulled when absent, digest {b.digest} checked" if b.digest else "") + ")")
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
                f"  command: {shlex.join(self.spec.argv)}" + (" (then kept alive)" if c.keep_alive else "")
                + (f" (after {secretenv.LOADER_NAME}: it reads and deletes {secretenv.ENV_FILE})"
                   if c.secret_env else ""),
                f"  working dir: {c.working_dir}",
                "  mounts: " + ", ".join(f"{h} -> {v['bind']} ({v['mode']})" for h, v in sorted(c.volumes.items())),
                f"  devices: {', '.join(c.devices) or 'none'}"
                + (f"; GPU request {c.gpu_request}" if c.gpu_request else "")
                + (f"; groups {', '.join(c.group_add)}" if c.group_add else ""),
                f"  network {c.network_mode}, ipc {c.ipc_mode}, user {c.user}, cap_add {', '.join(c.cap_add)}, "
                f"security_opt {', '.join(c.security_opt)}" + (f", cpuset {c.cpuset_cpus}" if c.cpuset_cpus else ""),
                f"  output: attached before start; dockerd's log {c.log_driver} "
                + " ".join(f"{k}={v}" for k, v in sorted(c.log_options.items()))]
        if c.extra:
            out.append("  additional_docker_run_options: " + ", ".join(
                f"{k}={'***' if k == 'environment' else v}" for k, v in sorted(c.extra.items())))
        out += ["  environment:", *render_env(c.environment, "    ")]
        if c.secret_env:
            out += [f"  secret environment (a 0600 file {secretenv.ENV_FILE} in the run folder, read and deleted "
                    "when the container starts; never in its config):", *render_env(c.secret_env, "    ")]
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


def for_arch(spec: RunSpec, build: BuildPlan, arch: str) -> BuildPlan:
    """madengine's ``--target-archs``: one image per architecture, ``<image>_<arch>``, built with
    ``MAD_SYSTEM_GPU_ARCHITECTURE=<arch>``; unchanged when the context's docker_build_arg sets
    that arg itself (madengine then ignores the target archs too)."""
    if not arch or build.prebuilt or "MAD_SYSTEM_GPU_ARCHITECTURE" in spec.context.dict_of("docker_build_arg"):
        return build
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", arch):
        raise ExecutorError(f"--mad-target-archs: {arch!r} is not an architecture name (e.g. gfx942)")
    return dataclasses.replace(build, image=f"{build.image}_{arch.lower()}", arch=arch,
                               build_args={**build.build_args, "MAD_SYSTEM_GPU_ARCHITECTURE": arch})


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


def process_start(pid: int) -> str:
    """The start time of ``pid`` (clock ticks since boot); "" when unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


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
    for host, target, readonly in spec.data_mounts:  # served by a data provider, checked there
        volumes[host] = {"bind": target, "mode": "ro" if readonly else "rw"}
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
    # One environment, as docker would apply it (the card's -e last), then split: secret values
    # never reach the container's config.
    env.update({str(k): str(v) for k, v in (extra.pop("environment", None) or {}).items()})
    env, secret_env = secretenv.split(env, secretenv.known_secrets(spec.workspace))
    bad = secretenv.bad_names(secret_env)
    if bad:
        raise ExecutorError(f"{spec.model.source} entry '{spec.model.name}': secret variable name {bad[0]!r} "
                            "cannot be exported by a shell (letters, digits and _, not starting with a digit)")
    command = list(spec.command())
    if keep_alive:
        command = ["bash", "-c", KEEP_ALIVE_SCRIPT, "mad-keep-alive", *command]
    if secret_env:
        command = [*secretenv.loader(), *command]
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
        extra=extra, secret_env=secret_env,
    )

