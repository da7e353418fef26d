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
from pytest_madengine.executors.docker import dockerfiles
from pytest_madengine.executors.docker.container import run_container
from pytest_madengine.executors.docker.images import BuildFailed, ImageBuilder, ImageResult, Interrupted
from pytest_madengine.executors.docker.plan import DockerPlan, container_name, plan_build, plan_container
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

    def describe(self) -> str:
        return f"docker ({ddaemon.docker_host()})"

    mounts_data = True

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
        facts["docker_sha"] = img.image_id
        props["image_reused"] = not img.built
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
