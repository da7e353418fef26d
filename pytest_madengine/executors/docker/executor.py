"""Run a model in a Docker container, madengine-style, through the Docker SDK.

Describe, then do: ``plan(spec)`` turns a ``RunSpec`` into plain data (``plan``: the Dockerfile
chosen, the image name, build context and args, the container's command, mounts, devices,
labels); ``run`` carries it out in four steps:

1. image: reused when its build-inputs hash matches, else built (``images``);
2. base image: pulled first when not present locally, after a registry login (``images``);
3. container: started, streamed into the sink, waited for against the deadline and the
   Cancel flag (``container``);
4. cleanup: the container is removed on every path unless ``--mad-keep-alive``
   (``container``); ``close()`` removes whatever this run still has, and construction sweeps
   containers left by a pytest that was killed (``daemon``).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_madengine.errors import ExecutorError
from pytest_madengine.executors.base import Cancel, Executor, Plan, RunOutcome, RunSpec
from pytest_madengine.executors.docker import daemon as ddaemon
from pytest_madengine.executors.docker import dockerfiles, publish, registry
from pytest_madengine.executors.docker import manifest as manifest_mod
from pytest_madengine.executors.docker.container import run_container
from pytest_madengine.executors.docker.images import BuildFailed, ImageBuilder, ImageResult, Interrupted
from pytest_madengine.executors.docker.manifest import ImageEntry, Manifest, RegistryTarget
from pytest_madengine.executors.docker.plan import (
    BuildPlan,
    DockerPlan,
    container_name,
    for_arch,
    plan_build,
    plan_container,
)
from pytest_madengine.output import OutputSink
from pytest_madengine.workspace import livelogs


class DockerExecutor(Executor):
    name = "docker"

    def __init__(self, options: Any, context: Any, run_id: str) -> None:
        self.options = options
        self.context = context
        self.run_id = run_id
        # Set by the session to show progress (pulls, build steps, keep-alive hints) on the terminal.
        self.progress: Callable[[str], None] | None = None
        self._prepared: dict[str, ImageResult] = {}  # images prepare() built, by model
        # One lock for the client, the container names and the builds (a build holds it), shared
        # by the parts so that they serialise with each other as one object did.
        self._lock = threading.RLock()
        self.images = ImageBuilder(options, run_id, self._lock, self._say)
        self.daemon = ddaemon.Daemon(self._lock)
        self._names: set[str] = set()
        self.swept: list[str] = []
        # Build once, run many: where images go (--mad-registry), come from (--mad-manifest,
        # --mad-use-image), and which architectures get one each (--mad-target-archs).
        reg = getattr(options, "registry", "") or ""
        self.registry: RegistryTarget | None = RegistryTarget.parse(reg) if reg else None
        self.registry_text = reg
        path = getattr(options, "manifest", None)
        self.manifest: Manifest | None = manifest_mod.load(Path(path)) if path else None
        self.use_image: str = getattr(options, "use_image", "") or ""
        self.target_archs: tuple[str, ...] = tuple(getattr(options, "target_archs", ()) or ())
        if getattr(options, "dry_run", False):
            return  # a dry run plans: it connects to nothing and removes nothing
        try:
            self.daemon.connect()
            self.swept = self.daemon.sweep_orphans()
        except ExecutorError:
            pass  # said again, on one line, by every model that needs the daemon

    @staticmethod
    def daemon_answers() -> tuple[bool, str]:
        """Whether a Docker daemon answers a ping within a few seconds, and a word on it."""
        return ddaemon.daemon_answers()

    def _say(self, text: str, sink: OutputSink | None = None) -> None:
        if sink is not None:
            sink.note(text)
        if self.progress is not None:
            try:
                self.progress(text)
            except Exception:  # noqa: BLE001 - a broken terminal must not fail the run
                pass

    def image_source(self, multi_node: bool) -> str:
        """One line on where this run's images come from (the session header)."""
        if self.manifest is not None:
            return (f"images: from the manifest {self.manifest.path} (pulled when absent, digest checked"
                    + (", on every node before the rendezvous" if multi_node else "") + "; nothing built)")
        if self.use_image:
            if self.use_image == "auto":
                return "images: each model's env_vars.DOCKER_IMAGE_NAME (--mad-use-image auto; nothing built)"
            return f"images: {self.use_image} for every model (--mad-use-image; nothing built)"
        push = f", pushed to {self.registry_text}" if self.registry is not None else ""
        if multi_node:
            return ("images: each node builds or reuses its own from its checkout" + push +
                    " (no --mad-manifest: nodes with different checkouts run different images)")
        return f"images: built or reused on this host{push}"

    def describe(self) -> str:
        return f"docker ({ddaemon.docker_host()})"

    mounts_data = True

    def uses_dockerfiles(self, context: Any) -> bool:
        return not (context.get("MAD_CONTAINER_IMAGE") or self.manifest is not None or self.use_image)

    # -- plan

    def plan(self, spec: RunSpec) -> DockerPlan:
        build = self._given_image(spec) or plan_build(spec)
        # A manifest's registry name carries a 64-character hash tag: the container keeps madengine's
        # container_ci-<model>_<stem>.
        named = build.image.rsplit("/", 1)[-1].split(":", 1)[0] if build.build_hash else build.image
        container = plan_container(spec, build.image, name=container_name(named),
                                   keep_alive=bool(self.options.keep_alive))
        return DockerPlan(spec=spec, build=build, container=container, rebuild=bool(self.options.rebuild))

    def _given_image(self, spec: RunSpec) -> BuildPlan | None:
        """The image a run is told to use (manifest entry, --mad-use-image), else None."""
        if self.manifest is not None:
            entry = self.manifest.image_for(spec.model.name, spec.env.get("MAD_SYSTEM_GPU_ARCHITECTURE", ""))
            ref = entry.registry_image or entry.docker_image
            return BuildPlan(ref, entry.dockerfile, None, "", dict(entry.build_args), entry.base_docker,
                             registry.registry_of(entry.base_docker) if entry.base_docker else "", prebuilt=True,
                             source=f"--mad-manifest {self.manifest.path} entry '{entry.key}'",
                             digest=entry.docker_sha or entry.image_id, build_hash=entry.build_hash,
                             arch=entry.gpu_architecture)
        if self.use_image:
            image, source = manifest_mod.use_image(self.use_image, spec.model.name, spec.model.env_vars)
            return BuildPlan(image, "", None, "", {}, image, registry.registry_of(image), prebuilt=True, source=source)
        return None

    # -- build phase (--mad-build-only)

    def build_only(self, plan: DockerPlan, sink: OutputSink, cancel: Any) -> tuple[list[ImageEntry], str, str]:
        """Build (or reuse) this item's image(s), one per target architecture, and push each to
        the registry. (entries, error, architecture that failed); runs nothing."""
        spec = plan.spec
        entries: list[ImageEntry] = []
        try:
            client = self.daemon.client_or_problem()
        except ExecutorError as exc:
            return entries, str(exc), ""
        try:
            creds = registry.load_credentials(spec.workspace)[0]
        except ExecutorError as exc:
            return entries, str(exc), ""
        secrets = registry.secrets_of(creds)
        for arch in self.target_archs or ("",):
            try:
                build = for_arch(spec, plan.build, arch)
            except ExecutorError as exc:
                return entries, str(exc), arch
            stem = sink.log_path.name.removesuffix(".log") + (f"_{arch.lower()}" if build.arch else "")
            log_path = sink.log_path.with_name(stem + ".build.log")
            try:
                img = self.images.ensure_image(client, spec, build, log_path, sink, cancel)
            except BuildFailed as exc:
                return entries, exc.reason, build.arch
            except Interrupted:
                return entries, "interrupted (Ctrl-C or SIGTERM) during the build", build.arch
            except ExecutorError as exc:
                return entries, str(exc), build.arch
            except Exception as exc:  # noqa: BLE001 - one model's build fails, not the build phase
                if ddaemon.is_connection_error(exc):
                    self.daemon.drop_client()
                    return entries, str(ddaemon.daemon_error(exc)), build.arch
                return entries, f"docker build of {build.image} failed: {type(exc).__name__}: {exc}", build.arch
            entry = ImageEntry(
                key=build.image, model=spec.model.name, docker_image=build.image,
                dockerfile=self._rel(Path(build.dockerfile), spec.workspace) if build.dockerfile else "",
                base_docker=build.base_docker, docker_sha=img.image_id, image_id=img.image_id,
                build_hash=img.build_hash, build_duration=img.build_duration, gpu_architecture=build.arch,
                build_args=manifest_mod.public_args(build.build_args, secrets), log_file=str(log_path),
                gpu_vendor=spec.gpu_vendor)
            if self.registry is not None:
                try:
                    pushed = publish.push(client, img.image_id, self.registry, build.image, img.build_hash, creds,
                                          secrets, lambda text: self._say(text, sink))
                except publish.PushFailed as exc:
                    entries.append(dataclasses.replace(entry, registry=self.registry_text, push_error=exc.reason))
                    return entries, exc.reason, build.arch
                entry = dataclasses.replace(entry, registry=self.registry_text, registry_image=pushed.reference,
                                            docker_sha=pushed.digest)
            entries.append(entry)
        return entries, "", ""

    # -- run

    def prepare(self, plan: Plan, sink: OutputSink, cancel: Cancel) -> RunOutcome | None:
        """Build (or find) the image now, so that multi-node peers meet after the build, not
        before it. None when ready; otherwise the failed outcome, which run() would give too."""
        assert isinstance(plan, DockerPlan)
        spec, build = plan.spec, plan.build
        try:
            client = self.daemon.client_or_problem()
            log_path = sink.log_path.with_name(sink.log_path.name.removesuffix(".log") + ".build.log")
            img = self.images.ensure_image(client, spec, build, log_path, sink, cancel)
        except BuildFailed as exc:
            return RunOutcome(None, 0.0, problem=exc.reason, image=build.image)
        except Interrupted:
            return RunOutcome(None, 0.0, interrupted=True, image=build.image)
        except ExecutorError as exc:
            return RunOutcome(None, 0.0, problem=str(exc), image=build.image)
        except Exception as exc:  # noqa: BLE001
            if ddaemon.is_connection_error(exc):
                self.daemon.drop_client()
                return RunOutcome(None, 0.0, problem=str(ddaemon.daemon_error(exc)), image=build.image)
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
            client = self.daemon.client_or_problem()
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
            img = self.images.ensure_image(client, spec, build, build_log_path, sink, cancel)
        except BuildFailed as exc:
            return RunOutcome(None, 0.0, problem=exc.reason, properties=props, **facts)
        except Interrupted:
            return RunOutcome(None, 0.0, interrupted=True, properties=props, **facts)
        except ExecutorError as exc:
            return RunOutcome(None, 0.0, problem=str(exc), properties=props, **facts)
        except Exception as exc:  # noqa: BLE001
            if ddaemon.is_connection_error(exc):
                self.daemon.drop_client()
                return RunOutcome(None, 0.0, problem=str(ddaemon.daemon_error(exc)), properties=props, **facts)
            raise
        facts["docker_sha"] = build.digest or img.image_id
        props["image_reused"] = not img.built
        if img.build_hash:
            props["build_hash"] = img.build_hash
        prepared = self._prepared.pop(spec.model.name, None)
        if prepared is not None and not img.built:  # built by prepare(), just before the rendezvous
            img = prepared
        props["container"] = name
        outcome = run_container(self.daemon, client, spec, container_plan, sink, cancel, self._say)
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

    def close(self) -> None:
        """Remove every container of this run that is not kept alive, and those of processes
        that died during it (``Daemon.remove_run``)."""
        self.daemon.remove_run(self.run_id)
