"""Session-wide state of a run and the steps that turn one model into a result.

``MadSession`` is created once per pytest process (controller and each xdist
worker). Items call ``run_model``; hooks only delegate here.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import signal
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_madengine import context as context_mod
from pytest_madengine import process
from pytest_madengine.context import Context
from pytest_madengine.data import config as data_config
from pytest_madengine.data import credentials as data_credentials
from pytest_madengine.data import resolve as data_resolve
from pytest_madengine.errors import MadError, UsageError
from pytest_madengine.executors import factory
from pytest_madengine.executors.base import Cancel, ExecutorChoice, Plan, RunOutcome, RunSpec
from pytest_madengine.executors.docker import registry
from pytest_madengine.executors.docker.variants import Variant, VariantFinder
from pytest_madengine.executors.slurm import deploy as slurm_deploy
from pytest_madengine.gpus import devices as gpus_mod
from pytest_madengine.gpus.scheduling import WaitNotes
from pytest_madengine.models import SCRIPT_KINDS, Model, TagSpec, path_bounds
from pytest_madengine.models import run_options as docker_run_options
from pytest_madengine.multinode import settings as multinode_mod
from pytest_madengine.multinode.deployment import launch_for
from pytest_madengine.multinode.launchers import torchrun
from pytest_madengine.multinode.launchers.base import Launch
from pytest_madengine.multinode.node import NodeRun, check_mirror, mirror_context_mounts, mirror_env, nothing_reported
from pytest_madengine.output import OutputSink
from pytest_madengine.results import errorscan
from pytest_madengine.results.result import FAILURE, SKIPPED, SUCCESS, ModelResult, Row
from pytest_madengine.verdict import evaluate
from pytest_madengine.workspace import around, gitclone, livelogs
from pytest_madengine.workspace import tools as tools_mod
from pytest_madengine.workspace.paths import flat_name, safe_relpath
from pytest_madengine.workspace.runfolder import copy_script_folder

DEFAULT_TIMEOUT_S = 7200
CLONE_TIMEOUT_S = 600.0  # a model's `url` clone (madengine: 240 s); large repositories with submodules need more


@dataclass(frozen=True)
class Options:
    root: Path
    executor: str = "auto"
    log_dir: Path = Path("mad_logs")
    work_dir: Path = Path("mad_work")
    timeout: int | None = None  # --mad-timeout; overrides every model's
    live_output: bool = False
    gpus: str = "all"
    disable_skip_gpu_arch: bool = False
    rebuild: bool = False
    keep_alive: bool = False
    dry_run: bool = False  # --mad-dry-run: plans only; backends start and remove nothing
    node_folders: bool = False  # multi-node with the default folders: mad_work/node<R>, mad_logs/node<R>
    skip_model_run: bool = False  # --mad-skip-model-run: all but the model's script
    force_mirror_local: Path | None = None  # --mad-force-mirror-local: MAD_DATAHOME, mounted
    data_config: Path | None = None  # --mad-data-config (None: data.json in the checkout, if any)
    # Build once, run many (README): the build phase and runs from what it made.
    build_only: bool = False  # --mad-build-only: build (and push) every selected model's image, run nothing
    build_jobs: int = 0  # --mad-build-jobs: parallel builds (0: from the CPU count)
    build_rows: bool = False  # --mad-build-perf-rows: a perf.csv row per build
    target_archs: tuple[str, ...] = ()  # --mad-target-archs
    registry: str = ""  # --mad-registry HOST[/NAMESPACE]
    manifest: Path | None = None  # --mad-manifest (run from it)
    use_image: str = ""  # --mad-use-image


def resolve_timeout(model_timeout: int, cli_timeout: int | None, ctx: Context) -> float | None:
    """madengine's rules: -1 = default (7200 s), 0 = none; --mad-timeout overrides all."""
    if cli_timeout is not None:
        chosen = cli_timeout
    elif model_timeout != -1:
        chosen = model_timeout
    else:
        chosen = int(ctx.get("timeout", DEFAULT_TIMEOUT_S))
    if chosen == -1:
        chosen = DEFAULT_TIMEOUT_S
    return None if chosen == 0 else float(chosen)


def script_argv(scripts: str, args: Sequence[str]) -> tuple[Path, tuple[str, ...]]:
    """(folder copied into the run folder, argv run there), as madengine runs scripts."""
    p = Path(scripts)
    runner = SCRIPT_KINDS.get(p.suffix.lower())
    if runner is not None:
        return p.parent, (runner, p.name, *args)
    return p, ("bash", "run.sh", *args)


def script_env(model: Model, ctx: Context, *, vendor: str, arch: str, system_ngpus: int,
               gpus: tuple[int, ...], runtime_ngpus: int, use_devices: bool, deployment: str,
               multi_node: multinode_mod.MultiNode | None = None, mirror: Path | None = None,
               launch: Launch | None = None, data_env: dict[str, str] | None = None,
               hip_version: str = "", product: str = "") -> dict[str, str]:
    """The environment madengine gives a model script, then env_vars and docker_env_vars."""
    env = {
        "MAD_MODEL_NAME": model.name,
        "MAD_RUNTIME_NGPUS": str(runtime_ngpus),
        "MAD_SYSTEM_NGPUS": str(system_ngpus),
        "MAD_GPU_VENDOR": vendor,
        "MAD_GUEST_OS": str(ctx.get("guest_os", "UBUNTU")),
        "MAD_SYSTEM_GPU_ARCHITECTURE": str(ctx.get("MAD_SYSTEM_GPU_ARCHITECTURE", arch)),
        "MAD_MULTI_NODE_RUNNER": torchrun.single_node(runtime_ngpus),
        "MAD_LAUNCHER": "torchrun",
        "MAD_DEPLOYMENT_TYPE": deployment,
        "MAD_DATANAME": model.data,
        "MAD_SYSTEM_HIP_VERSION": hip_version,
        "MAD_SYSTEM_GPU_PRODUCT_NAME": product,
    }
    if model.multiple_results:
        env["MAD_OUTPUT_CSV"] = model.multiple_results
    if multi_node is not None:  # multi_node_args given: madengine 1.x runner and MASTER_ADDR/... exported
        env.update(multinode_mod.launch_env(multi_node, runtime_ngpus))
    if launch is not None:  # madengine 2.x `distributed`: the launcher's runner and every variable it sets
        env.update(launch.env)
    env.update(mirror_env(mirror))
    env.update(data_env or {})  # the served data's folders replace the bare mirror
    if os.environ.get("BUILD_NUMBER"):
        env["JENKINS_BUILD_NUMBER"] = os.environ["BUILD_NUMBER"]
    if use_devices:
        env.update(gpus_mod.visibility_env(vendor, gpus))
    if gpus:
        env["MAD_GPU_IDS"] = ",".join(map(str, gpus))  # the ids held, virtual pools included
    env.update({k: str(v) for k, v in model.env_vars.items()})
    env.update({k: str(v) for k, v in ctx.dict_of("docker_env_vars").items()})
    return env


def skip_reason(model: Model, arch: str, disabled: bool) -> str | None:
    if disabled or not arch or not model.skip_gpu_arch:
        return None
    for pattern in model.skip_gpu_arch:
        if pattern and (arch == pattern or arch.startswith(pattern)):
            return f"skip_gpu_arch: {model.name} is not run on {arch} (pattern {pattern!r}); --mad-disable-skip-gpu-arch runs it"
    return None


class NotRunnable(Exception):
    """An item that fails before anything runs (its args, script or GPU count); the reason."""


@dataclass(frozen=True)
class ItemRun:
    """One item's run before its GPUs are held: what runs, where, for how long."""

    model: Model
    item_name: str
    argv: tuple[str, ...]
    source_dir: Path  # the script's folder in the checkout, copied into run_dir
    run_dir: Path
    timeout: float | None
    n_gpus: int  # GPUs it takes from the pool
    variant: Variant | None = None
    around: tuple[around.Step, ...] = ()  # the context's pre/post scripts (and the tools'), checked once
    tools: tools_mod.ToolSet = tools_mod.ToolSet()  # the context's tools and encapsulate_script
    data_names: tuple[str, ...] = ()  # the model's `data`, each checked against data.json


class GpuWaitCancelled(Exception):
    """Ctrl-C or SIGTERM while a model waited for its GPUs."""


class Interrupts:
    """First Ctrl-C (or SIGTERM) stops the model in progress and marks the run interrupted:
    every later item then fails at once, so each selected model still gets its testcase and
    perf.csv row. A second Ctrl-C raises KeyboardInterrupt as usual."""

    def __init__(self) -> None:
        self.interrupted = False
        self.cancel = Cancel()

    @contextmanager
    def guard(self) -> Iterator[Cancel]:
        if threading.current_thread() is not threading.main_thread():
            yield self.cancel
            return

        def on_signal(signum: int, frame: Any) -> None:
            if self.interrupted and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.interrupted = True
            self.cancel.event.set()

        old_int = signal.signal(signal.SIGINT, on_signal)
        old_term = signal.signal(signal.SIGTERM, on_signal)
        try:
            yield self.cancel
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)


class MadSession:
    def __init__(self, options: Options, context_sources: Sequence[tuple[str, str]],
                 make_executor: Callable[[str, Context, Options, str], ExecutorChoice] | None = None) -> None:
        self.options = options
        self.run_id = uuid.uuid4().hex[:12]
        self.context, self.context_warnings = context_mod.build(context_sources)
        self.context = context_mod.with_detected(self.context, options.root)
        self.multi_node = multinode_mod.from_context(self.context)  # multi_node_args; UsageError if unusable
        if self.multi_node.needs_barrier and options.node_folders:
            # Every node runs pytest, often in one shared checkout (NFS): each writes its own run
            # folders and logs. (mpirun starts the other ranks from node 0: one pytest, no clash.)
            node = f"node{self.multi_node.node_rank}"
            options = dataclasses.replace(options, work_dir=options.work_dir / node, log_dir=options.log_dir / node)
            self.options = options
        self.context_warnings = [*self.context_warnings, *self.multi_node.warnings]
        self.mirror = check_mirror(options.force_mirror_local)  # never created here
        self.run_context = self.context if self.mirror is None else Context(  # the mirror mounted at its path
            data=context_mod.merge(self.context.data, {"docker_mounts": mirror_context_mounts(self.mirror)}),
            sources=self.context.sources)
        self.gpu_info = gpus_mod.detect()
        if self.context.gpu_vendor:
            vendor = self.context.gpu_vendor
            if vendor != self.gpu_info.vendor:
                self.gpu_info = dataclasses.replace(self.gpu_info, vendor=vendor,
                                                    ids=self.gpu_info.ids if vendor != "NONE" else (),
                                                    how="gpu_vendor from the context")
        # madengine's docker_gpus ("0-3", "0,2") sets the pool when --mad-gpus is left at all.
        gpu_spec = str(self.context.get("docker_gpus") or "all") if options.gpus == "all" else options.gpus
        self.pool = gpus_mod.resolve_pool(gpu_spec, self.gpu_info)
        self.arch = str(self.context.get("MAD_SYSTEM_GPU_ARCHITECTURE", self.gpu_info.arch))
        make = make_executor or factory.make
        choice = make(options.executor, self.context, options, self.run_id)
        self.executor, self.executor_why = choice.executor, choice.why
        if "slurm" in self.context and self.executor.name != "slurm":
            self.context_warnings = [*self.context_warnings, f"context key 'slurm' acts on the SLURM executor only; "
                                     f"this run uses {self.executor.name} ({self.executor_why})"]
        if self.executor.remote_gpus:  # the nodes' GPUs (SLURM's GPUS_PER_NODE), not this host's
            self.pool = gpus_mod.GpuPool(self.pool.vendor, (), "none", f"on the {self.executor.name} nodes")
        self.interrupts = Interrupts()
        self.sweep_orphans()  # a replacement for a lost xdist worker ends what the lost one left running
        self.names_seen: dict[str, Path] = {}
        self.model_files: set[Path] = set()  # set by the plugin: what it collects
        self.tag_specs: list[TagSpec] = []  # --mad-tags, parsed
        self._variants = VariantFinder(self.context, self.pool.vendor)
        self._data_config: data_config.DataConfig | MadError | None = None

    def data_config(self) -> data_config.DataConfig:
        """data.json (``--mad-data-config``) and the context's ``data``, read once; DataError
        (raised again for each model that needs data) when unusable."""
        if self._data_config is None:
            given = self.options.data_config
            try:
                self._data_config = data_config.load(
                    given or self.options.root / data_config.DATA_FILE, given is not None,
                    self.context.get("data"), self.mirror)
            except MadError as exc:
                self._data_config = exc
        if isinstance(self._data_config, MadError):
            raise self._data_config
        return self._data_config

    def in_container(self) -> bool:
        """Whether the script runs in a container with the data mounted (else host paths)."""
        return self.executor.mounts_data

    def variants(self, model: Model) -> tuple[list[Variant], list[str]]:
        """The Dockerfiles ``model`` runs with (one item each), when the executor builds images."""
        if not self.executor.uses_dockerfiles(self.context):
            return [], []
        return self._variants(model)

    def header(self) -> list[str]:
        lines = [
            f"madengine: executor {self.executor.name} ({self.executor_why}); GPUs: {self.pool.note}"
            + (f", arch {self.arch}" if self.arch else ""),
        ]
        ctx_keys = sorted(k for k in self.context if self.context[k] not in ({}, None, "")
                          and not (k == "ctx_test" and self.context[k] == "None"))  # detected default
        lines.append(f"madengine: context keys {', '.join(ctx_keys) or '(defaults)'}; logs in {self.options.log_dir}")
        mn = self.multi_node
        if mn.configured:
            lines.append(f"madengine: multi-node: node {mn.node_rank} of {mn.nnodes}, {mn.runner}, master "
                         f"{mn.master_addr}:{mn.master_port}" + (f", rendezvous port {mn.rendezvous_port} "
                         f"(timeout {mn.rendezvous_timeout:g} s)" if mn.needs_barrier else ""))
        if self.mirror is not None:
            lines.append(f"madengine: data mirror {self.mirror} (MAD_DATAHOME)")
        image_source = getattr(self.executor, "image_source", None)
        if image_source is not None and not self.context.get("MAD_CONTAINER_IMAGE"):
            lines.append(f"madengine: {image_source(mn.configured)}")
        lines += [f"madengine: warning: {w}" for w in self.context_warnings]
        return lines

    def claim_name(self, name: str, source: Path) -> str | None:
        first = self.names_seen.setdefault(name, source)
        if first != source:
            return f"duplicate name '{name}': also defined in {first}"
        return None

    def log_path(self, model_name: str) -> Path:
        """``mad_logs/<model>.log`` (``<item name>`` when a model runs with several Dockerfiles)."""
        rel = safe_relpath(model_name)
        return self.options.log_dir / rel.parent / f"{rel.name}.log"

    def model_args(self, model: Model) -> str:
        """madengine's context key ``model_args`` replaces every model's ``args``."""
        given = self.context.get("model_args")
        return str(given) if given is not None else model.args

    def base_result(self, model: Model, extra_args: Sequence[str], item_name: str | None = None) -> ModelResult:
        args = " ".join([self.model_args(model), shlex.join(extra_args)]).strip()
        return ModelResult(
            model=model.name, status=FAILURE, executor=self.executor.name, tags=model.tags,
            n_gpus=model.n_gpus, args=args, dockerfile=model.dockerfile,
            gpu_architecture=self.arch, training_precision=model.training_precision,
            dataname=model.data, log=str(self.log_path(item_name or model.name)),
        )

    def skip_reason_of(self, model: Model) -> str | None:
        return skip_reason(model, self.arch, self.options.disable_skip_gpu_arch)

    def item_run(self, model: Model, extra_args: Sequence[str], variant: Variant | None = None,
                 item_name: str | None = None) -> ItemRun:
        """What running this item means, before any GPU is held: pure (reads the checkout,
        writes nothing). Raises NotRunnable with the reason the item fails."""
        item_name = item_name or model.name
        try:
            args = shlex.split(self.model_args(model)) + list(extra_args)
        except ValueError as exc:
            where = ("context key 'model_args'" if "model_args" in self.context
                     else f"{model.source} entry '{model.name}': field 'args'")
            raise NotRunnable(f"{where} cannot be split: {exc}") from None
        script = model.base_dir / model.scripts
        if not script.exists():
            raise NotRunnable(f"script not found: {script} ({model.source} entry '{model.name}', field 'scripts')")
        try:
            n = gpus_mod.wanted(model.n_gpus, self.pool)
        except UsageError as exc:
            raise NotRunnable(f"{model.name} {exc}") from None
        try:
            steps = around.steps(self.context, self.options.root)  # pre/post scripts checked before anything runs
            toolset = tools_mod.from_context(self.context, self.options.root.resolve())
            steps = toolset.stack(steps)
            errorscan.from_settings(model.raw, self.context)  # log_error_* checked before anything runs
            self.launch_of(model, n)  # `distributed` settings checked before anything runs
            names = data_config.datanames(model.data, f"{model.source} entry '{model.name}'")
            for name in names:  # every dataname's entry checked before anything runs
                self.data_config().sources(name)
        except MadError as exc:
            raise NotRunnable(f"model '{model.name}': {exc}") from None
        folder, argv = script_argv(model.scripts, args)
        return ItemRun(model=model, item_name=item_name, argv=argv,
                       source_dir=Path(os.path.normpath(model.base_dir / folder)),
                       run_dir=(self.options.work_dir / flat_name(item_name)).resolve(),
                       timeout=resolve_timeout(model.timeout, self.options.timeout, self.context),
                       n_gpus=n, variant=variant, around=steps, tools=toolset, data_names=names)

    def launch_of(self, model: Model, ngpus: int) -> Launch | None:
        """The ``distributed`` launcher's runner and environment for this node (None without
        ``distributed``). Raises LauncherError naming the key. On SLURM the `slurm` key's
        ``nodes`` sizes the job, so it is the launcher's node count too (as in madengine)."""
        job_nodes = slurm_deploy.job_nodes(model.raw, self.context) if self.executor.name == "slurm" else None
        launch = launch_for(model.raw, self.context, self.multi_node, ngpus, model.name, job_nodes=job_nodes)
        if launch is not None and job_nodes is not None and job_nodes > 1:
            # The job's task script runs each node's own setup (a Ray head on node 0, a worker
            # elsewhere); node 0's here too would start a second head in its task.
            launch = dataclasses.replace(launch, setup=())
        return launch

    def spec_for(self, run: ItemRun, gpus: tuple[int, ...],
                 data: data_resolve.DataResult | None = None) -> RunSpec:
        """The executor's input once ``gpus`` are held (pure; ``data``: what was served, None in
        a plan made before the run, which only names the providers). Raises LauncherError."""
        model = run.model
        launch = self.launch_of(model, len(gpus))
        # --mad-skip-model-run: the same plan with `true` where the script would run
        argv = ("true",) if self.options.skip_model_run else run.argv
        env_csv = around.env_csv_name(model.name) if around.env_snapshot_on(model.raw, self.context) else ""
        steps = run.around
        wrapper = around.prefix(steps, env_csv)
        notes = [around.describe(steps, env_csv)] if wrapper else []
        if run.tools:  # binaries checked first, then pre-scripts, then the tools' chain around the script
            wrapper = (*run.tools.check_prefix(), *wrapper, *run.tools.chain())
            notes.append(run.tools.describe())
        if launch is not None and launch.setup:
            # The launcher's per-node setup (a Ray head or worker) runs first, in the same
            # process group or container; its argv are constants and quoted, never user text.
            setup = "; ".join(shlex.join(step) for step in launch.setup)
            wrapper = ("bash", "-c", f'set -e; {setup}; exec "$@"', "mad-launcher-setup", *wrapper)
            notes.insert(0, f"launcher setup: {setup}")
        if data is not None:
            data_lines = tuple(f"data: {s.fetch.render()}" for s in data.served)
        elif run.data_names:
            data_lines = tuple(data_resolve.describe(run.data_names, self.data_config()))
        else:
            data_lines = ()
        return RunSpec(
            model=model, argv=argv, wrapper=wrapper, around=", ".join(n for n in notes if n),
            env={**script_env(model, self.context, vendor=self.pool.vendor, arch=self.arch,
                              system_ngpus=len(self.gpu_info.ids), gpus=gpus, runtime_ngpus=len(gpus),
                              use_devices=self.pool.uses_devices, deployment=self.executor.name,
                              multi_node=self.multi_node if self.multi_node.configured else None,
                              mirror=self.mirror, launch=launch, hip_version=self.gpu_info.hip_version,
                              product=self.gpu_info.product,
                              data_env=data.env(self.in_container()) if data is not None else None),
                 **run.tools.env},
            data_mounts=data.mounts() if data is not None else (), data=data_lines,
            files=dict(launch.files) if launch is not None else {},
            run_dir=run.run_dir, workspace=self.options.root.resolve(), timeout=run.timeout, gpus=gpus,
            gpu_vendor=self.pool.vendor, use_gpu_devices=self.pool.uses_devices,
            context=self.run_context, run_id=self.run_id,
            dockerfile=run.variant.dockerfile if run.variant is not None else None,
        )

    def plan_item(self, model: Model, extra_args: Sequence[str], variant: Variant | None = None,
                  item_name: str | None = None) -> Plan:
        """The plan a run of this item executes, GPU ids aside (a dry run prints it; SLURM
        submits it ahead of the item's turn). Raises NotRunnable or ExecutorError."""
        return self.executor.plan(self.spec_for(self.item_run(model, extra_args, variant, item_name), ()))

    def prepare_run_folder(self, run: ItemRun, note: Callable[[str], None]) -> str:
        """A fresh run folder: the clone of the model's ``url`` (if any), then its script
        folder. Returns the clone's commit ("" without a url). Raises MadError or OSError."""
        model, run_dir = run.model, run.run_dir
        shutil.rmtree(run_dir, ignore_errors=True)  # an earlier run's results must never be read as this run's
        commit = self._clone(model, run_dir, note) if model.url else ""
        copy_script_folder(run.source_dir, run_dir, bounds=path_bounds(model.source, self.options.root),
                           skip=(self.options.work_dir, self.options.log_dir), note=note, fresh=False)
        for step in run.around:  # madengine copies them in as well
            shutil.copy2(step.source, run_dir / step.name)
        for source in run.tools.files:  # the tools' helper scripts, found in the script's working directory
            if (run_dir / source.name).exists():
                raise UsageError(f"{source} (context key 'tools' or 'encapsulate_script') would replace "
                                 f"{source.name} of the run folder")
            shutil.copy2(source, run_dir / source.name)
        if around.env_snapshot_on(model.raw, self.context):
            (run_dir / around.ENV_SCRIPT).write_text(around.ENV_SNAPSHOT)
        stale = run_dir / model.multiple_results if model.multiple_results else None
        if stale is not None and stale.is_file():  # left in the script's folder by an earlier run
            stale.unlink()
            note(f"removed {model.multiple_results} copied from {run.source_dir}: only this run's results count")
        return commit

    def run_model(self, model: Model, extra_args: Sequence[str], live: Any = None,
                  variant: Variant | None = None, item_name: str | None = None) -> ModelResult:
        item_name = item_name or model.name
        result = self.base_result(model, extra_args, item_name)
        if model.raw.get("additional_docker_run_options") and self.executor.uses_dockerfiles(self.context):
            result.properties["additional_docker_run_options"] = docker_run_options.masked(
                str(model.raw["additional_docker_run_options"]))
        if self.interrupts.interrupted:
            result.reason = "not run: the session was interrupted (Ctrl-C or SIGTERM)"
            return result
        why_skip = skip_reason(model, self.arch, self.options.disable_skip_gpu_arch)
        if why_skip:
            result.status, result.reason = SKIPPED, why_skip
            result.rows = [Row(model.name, None, "", SKIPPED)]
            return result
        try:
            run = self.item_run(model, extra_args, variant, item_name)
        except NotRunnable as exc:
            result.reason = str(exc)
            return result
        sink = OutputSink(self.log_path(item_name), live=live)
        sink.error_scan = errorscan.from_settings(model.raw, self.context)
        result.log = str(sink.log_path)
        node = NodeRun(self.multi_node, model.name, self.mirror) if self.multi_node.configured else None
        try:
            commit = self.prepare_run_folder(run, sink.note)
        except (MadError, OSError) as exc:
            return self._not_run(result, f"cannot prepare the run folder {run.run_dir}: {exc}", sink, node)
        if commit:
            result.properties["git_commit"] = commit
        data = None
        if run.data_names:
            try:
                with self.interrupts.guard() as cancel:  # Ctrl-C stops a download, the row stays
                    data = self.serve_data(run, sink.note, cancel)
            except MadError as exc:  # no provider serves a name: the model does not run without it
                return self._not_run(result, f"not run: {exc}", sink, node)
            result.properties.update(data.perf())
        waits = WaitNotes(sink.note, run.n_gpus, self.pool.ids)
        try:
            # Guarded from the GPU wait on: a signal then cancels the wait or the run, never loses the row.
            with self.interrupts.guard() as cancel:
                outcome = self._allocate_and_run(run, waits, sink, result, node, cancel, data)
        except MadError as exc:  # a backend's problem, or a launcher setting the GPUs given cannot serve
            outcome = RunOutcome(None, 0.0, problem=str(exc))
        finally:
            if data is not None:
                data_resolve.release_all(data, sink.note)
            sink.close()
        result.duration, result.build_duration = outcome.duration, outcome.build_duration
        result.image, result.docker_sha = outcome.image, outcome.docker_sha
        result.dockerfile = outcome.dockerfile or result.dockerfile
        result.base_docker = outcome.base_docker or result.base_docker
        if outcome.nnodes is not None:
            result.nnodes = outcome.nnodes
        result.properties.update(outcome.properties)
        status, reason, rows, warnings = evaluate(model.name, outcome, sink.scanner.lines,
                                                  model.multiple_results, run.run_dir, run.timeout,
                                                  hf_line=sink.scanner.hf, total=sink.scanner.count,
                                                  error_hit=sink.error_scan.hit if sink.error_scan else None)
        result.status, result.reason, result.rows = status, reason, rows
        result.warnings = warnings
        if model.multiple_results and not self.options.dry_run:
            copied = livelogs.copy_result(self.options.root, model.multiple_results,
                                          run.run_dir / model.multiple_results)
            if copied is not None:  # where madengine leaves it (Jenkins jobs archive it from there)
                result.properties["multiple_results_copy"] = str(copied)
        if self.options.skip_model_run and outcome.exit_code == 0 and not outcome.problem:
            result.skip("model run skipped (--mad-skip-model-run)", perf_row=False)  # madengine: no row either
        env_csv = run.run_dir / around.env_csv_name(model.name)
        if env_csv.is_file():
            result.properties["env_csv"] = str(env_csv)
        if run.tools.tools:
            self.read_back_tools(run, result, item_name)
        failed = around.failed_step(run.run_dir)
        if failed is not None:
            kind, name, code = failed
            why = f"{kind}-script {name} exited {code}" + (" (timed out)" if code == 124 else "")
            result.properties[f"{kind}_script_failed"] = why
            result.fail(why, rows="drop" if kind == "pre" else "keep")
        if sink.log_error:  # the run's record is incomplete (its file system full): never a quiet pass
            result.fail(f"{result.reason}; {sink.log_error}" if result.status == FAILURE and result.reason
                        else f"{sink.log_error}; the log is incomplete", rows="drop")
        if node is not None:  # this node's verdict; node 0 combines the ranks' values
            node.finish(result, outcome_ok=outcome.exit_code == 0 and not (outcome.problem or outcome.timed_out
                                                                      or outcome.interrupted),
                        log_path=sink.log_path, run_dir=run.run_dir, multiple_results=model.multiple_results,
                        nothing_reported=nothing_reported(sink.scanner.lines, sink.scanner.hf,
                                                          model.multiple_results, run.run_dir),
                        cancel=self.interrupts.cancel)
        result.tail = sink.tail()
        return result

    def _not_run(self, result: ModelResult, reason: str, sink: OutputSink, node: NodeRun | None) -> ModelResult:
        """The model fails before its run: the other nodes are told at once (they must not wait
        out the rendezvous for this one), and the log so far is kept."""
        result.reason = reason
        if node is not None:
            with self.interrupts.guard() as cancel:
                node.abandon(reason, sink, cancel)
        sink.close()
        result.tail = sink.tail()
        return result

    def read_back_tools(self, run: ItemRun, result: ModelResult, item_name: str) -> None:
        """The tools' outputs copied next to the log and listed; a missing binary fails the item."""
        try:
            result.properties.update(tools_mod.collect(run.run_dir, self.tools_dir(item_name)))
        except OSError as exc:
            result.warnings.append(f"cannot copy the tools' outputs: {exc}")
        gone = tools_mod.missing(run.run_dir)
        if gone is not None:
            tool, binary = gone
            where = {"docker": "in the image", "slurm": "on the compute node"}.get(self.executor.name,
                                                                                 "on this host (PATH)")
            why = f"tool '{tool}': {binary.replace('|', ' or ')} not found {where}"
            result.properties["tool_missing"] = why
            result.fail(why, rows="drop")

    def tools_dir(self, item_name: str) -> Path:
        """``mad_logs/<model>_tools/``: the tools' outputs of one item."""
        log = self.log_path(item_name)
        return log.with_name(f"{log.name.removesuffix('.log')}_tools")

    def serve_data(self, run: ItemRun, note: Callable[[str], None], cancel: Cancel) -> data_resolve.DataResult:
        """Fetch or mount the model's datanames before it runs (DataError when one cannot be)."""
        root = self.options.root.resolve()
        return data_resolve.serve(run.data_names, self.data_config(), data_credentials.load(root),
                                  root=root, scratch=self.data_scratch(run),
                                  known_hosts=self.options.work_dir.resolve() / ".mad_known_hosts", note=note,
                                  cancel=lambda: bool(cancel))

    def data_scratch(self, run: ItemRun) -> Path:
        """Where data without a mirror lands for this item: beside the run folders, not in one
        (SLURM copies the run folder to each node; the data is read where it is)."""
        return self.options.work_dir.resolve() / ".mad_data" / flat_name(run.item_name)

    def build_spec(self, model: Model, variant: Variant | None, item_name: str) -> RunSpec:
        """What the build phase plans an image from (pure): the build needs the Dockerfile,
        the context and the architecture, not the script, its args or GPUs (a build host
        usually has none), so none of those is checked here."""
        return RunSpec(
            model=model, argv=("true",), wrapper=(), around="",
            env=script_env(model, self.context, vendor=self.pool.vendor, arch=self.arch, system_ngpus=0, gpus=(),
                           runtime_ngpus=0, use_devices=False, deployment=self.executor.name),
            files={}, run_dir=(self.options.work_dir / flat_name(item_name)).resolve(),
            workspace=self.options.root.resolve(), timeout=None, gpus=(), gpu_vendor=self.pool.vendor,
            use_gpu_devices=False, context=self.run_context, run_id=self.run_id,
            dockerfile=variant.dockerfile if variant is not None else None,
        )

    def build_model(self, model: Model, extra_args: Sequence[str], variant: Variant | None = None,
                    item_name: str | None = None) -> tuple[ModelResult, dict[str, Any]]:
        """--mad-build-only: build (or reuse) and push this item's image(s); run nothing. The
        result (SUCCESS or FAILURE with the build log's tail; a perf.csv row only with
        --mad-build-perf-rows) and the item's build record for the manifest."""
        from pytest_madengine.executors.docker.manifest import BuildRecord  # only the Docker backend builds

        item_name = item_name or model.name
        result = self.base_result(model, extra_args, item_name)
        result.perf_row = self.options.build_rows
        record = BuildRecord(model.name, (), model.raw)
        build_only = getattr(self.executor, "build_only", None)
        if build_only is None:
            result.reason = f"--mad-build-only needs the docker executor (this run uses {self.executor.name})"
            return result, dataclasses.replace(record, error=result.reason).to_json()
        if self.interrupts.interrupted:
            result.reason = "not built: the session was interrupted (Ctrl-C or SIGTERM)"
            return result, dataclasses.replace(record, error=result.reason).to_json()
        sink = OutputSink(self.log_path(item_name))
        result.log = str(sink.log_path)
        try:
            plan = self.executor.plan(self.build_spec(model, variant, item_name))
            sink.note(plan.render())
            with self.interrupts.guard() as cancel:
                entries, error, arch = build_only(plan, sink, cancel)
        except MadError as exc:
            entries, error, arch = [], str(exc), ""
        finally:
            sink.close()
        record = BuildRecord(model.name, tuple(entries), model.raw, error, arch)
        built = [e for e in entries if not e.push_error]
        if built:
            last = built[-1]
            result.image, result.docker_sha = last.registry_image or last.docker_image, last.docker_sha
            result.dockerfile, result.base_docker = last.dockerfile or result.dockerfile, last.base_docker
            result.build_duration = sum(e.build_duration for e in entries)
            result.properties["build_hash"] = ",".join(e.build_hash for e in built)
            if any(e.registry_image for e in built):
                result.properties["registry_image"] = ",".join(e.registry_image for e in built)
        result.properties["build_only"] = True
        if error:
            result.status, result.reason = FAILURE, error
        else:
            result.status, result.reason = SUCCESS, ""
            result.rows = [Row(model.name, None, "", SUCCESS)]
        result.tail = sink.tail()
        return result, record.to_json()

    def _allocate_and_run(self, run: ItemRun, waits: WaitNotes, sink: OutputSink, result: ModelResult,
                          node: NodeRun | None, cancel: Cancel,
                          data: data_resolve.DataResult | None = None) -> RunOutcome:
        def on_wait(elapsed: float) -> None:
            if cancel:
                raise GpuWaitCancelled(elapsed)
            waits(elapsed)

        try:
            with self.allocate(run.n_gpus, on_wait=on_wait) as ids:
                if waits.waited:
                    result.properties["gpu_wait_s"] = f"{waits.waited:.1f}"
                result.gpus, result.runtime_ngpus = ids, len(ids)
                plan = self.executor.plan(self.spec_for(run, ids, data))
                sink.note(plan.render())  # the plan this run executes, at the top of its log
                for name, text in plan.spec.files.items():  # a launcher's hostfile, in the run folder
                    (run.run_dir / name).write_text(text)
                if node is None:
                    return self.executor.run(plan, sink, cancel)
                # Multi-node: build first, then meet, so no peer waits out a build in the barrier.
                prepared = self.executor.prepare(plan, sink, cancel)
                if prepared is not None:
                    node.abandon(prepared.problem or "its preparation failed", sink, cancel)
                    return prepared
                joined = node.join(sink, cancel)
                if joined:
                    return RunOutcome(None, 0.0, problem=joined)
                return self.executor.run(plan, sink, cancel)
        except GpuWaitCancelled as stop:
            sink.note(f"interrupted while waiting {stop.args[0]:.0f} s for {run.n_gpus} GPUs")
            return RunOutcome(None, 0.0, interrupted=True)

    def _clone(self, model: Model, run_dir: Path, note: Callable[[str], None]) -> str:
        """Clone ``model.url`` into ``run_dir`` (submodules too, credentials from
        ``credential.json`` by the card's ``cred`` or the host, never in argv or logs);
        the commit, for perf.csv's ``git_commit``."""
        entries, _ = registry.load_credentials(self.options.root.resolve())
        cred = gitclone.credential_for(model.url, str(model.raw.get("cred") or ""), entries)
        plan = gitclone.clone_plan(model.url, run_dir, credential=cred)
        note(f"clone: {plan.render()} (deadline {CLONE_TIMEOUT_S:g} s)")
        done = gitclone.run_clone(plan, deadline_s=CLONE_TIMEOUT_S, log=note,
                                  cancel=lambda: bool(self.interrupts.cancel))
        note(f"cloned {model.url if cred is None else plan.render()} at {done.commit}")
        return done.commit

    @contextmanager
    def allocate(self, n: int, on_wait: Any = None) -> Iterator[tuple[int, ...]]:
        # One pytest process runs one model at a time; xdist workers share through gpu locks.
        from pytest_madengine.gpus.locks import GpuLeases

        if n == 0:
            yield ()
            return
        # Real GPUs are booked host-wide, whatever the checkout or --mad-work-dir; virtual
        # pools (scheduling only) belong to their run folder.
        folder = (Path(os.environ.get("MAD_GPU_LOCK_DIR", "/tmp/pytest-madengine-gpu-locks"))
                  if self.pool.uses_devices else self.options.work_dir / ".gpu-locks")
        leases = GpuLeases.for_folder(folder, self.pool.ids)
        with leases.take(n, on_wait=on_wait) as ids:
            yield ids

    def sweep_orphans(self) -> list[str]:
        """End the model process groups a killed pytest process (an xdist worker) left running."""
        return process.sweep_orphan_groups(self.options.work_dir / process.LEDGER)

    def close(self) -> None:
        self.sweep_orphans()
        self.executor.close()
