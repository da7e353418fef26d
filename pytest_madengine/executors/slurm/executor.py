"""Run a model as SLURM job(s): submit, follow with the shared poller, report.

Three paths: two chosen by ``slurm_args`` (madengine 1.x's context key), one by ``slurm``:

* framework (``FRAMEWORK`` set): ``scripts/<FRAMEWORK>/run.sh`` submits the job(s) itself;
  we run it with MODEL_NAME, node counts, PARTITION, TIME and DOCKER_IMAGE in its
  environment, read the job ids it printed and follow every one of them to its end;
* native: we write the batch script (``slurm.batch``), submit it with
  ``sbatch --parsable``, and every node runs the model's script with
  ``MAD_MULTI_NODE_RUNNER`` set for a torchrun rendezvous on the job's first node.

A COMPLETED job is exit 0 and its nodes' logs (rank 0 first, each line prefixed with its
node) go into the model's log, so performance lines are read as for any other executor;
any other final state is the item's one-line reason. Our timeout, Ctrl-C and the end of
the session ``scancel`` what this run submitted.

* deploy (madengine 2.x's ``slurm`` key, from the model card and the context): the sbatch
  script of ``jobscript.py``: one task per node running the ``distributed`` launcher's
  per-node form, or (``slurm_multi``) the model's own script as the job. Only node 0's
  output is read for the run's performance; per-rank values of every node are combined
  (``gather.py``). Optional node preflight (``preflight.py``).

Every job has a deadline: queue allowance + the model's timeout (else the job's time limit)
+ a grace period; past it the job is cancelled and the item fails with the reason.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_madengine import masking, process
from pytest_madengine.context import Context
from pytest_madengine.errors import ExecutorError, UsageError
from pytest_madengine.executors import secretenv
from pytest_madengine.executors.base import Cancel, Executor, Plan, RunOutcome, RunSpec, render_env, shown_value
from pytest_madengine.executors.docker import manifest as manifest_mod
from pytest_madengine.executors.slurm import args as args_mod
from pytest_madengine.executors.slurm import batch as batch_mod
from pytest_madengine.executors.slurm import container as container_mod
from pytest_madengine.executors.slurm import deploy as deploy_mod
from pytest_madengine.executors.slurm import deployjob, gather, jobscript, preflight
from pytest_madengine.executors.slurm import poller as poller_mod
from pytest_madengine.executors.slurm.records import describe_final, expand_hostlist, job_ids_from_output
from pytest_madengine.multinode.deployment import distributed_settings
from pytest_madengine.output import MAX_LINE, READ_CHUNK, LineFeed, OutputSink, file_lines
from pytest_madengine.workspace import tools as tools_mod
from pytest_madengine.workspace.paths import safe_relpath

SUBMIT_TIMEOUT_S = 600.0  # a framework's run.sh must have submitted by then
CONTROLLER_GRACE_S = 900.0  # slurmctld unreachable this long fails the item
CANCEL_WAIT_S = 15.0  # after scancel, how long we wait to read the final state
DEADLINE_GRACE_S = 120.0  # SLURM checks time limits periodically (TIMEOUT comes 0-30 s late)


def _relpath(name: str) -> Path:
    return safe_relpath(name)


@dataclass
class Submission:
    """The job(s) one model's run submitted, and what the submission said."""

    key: tuple[Any, ...]
    kind: str  # native | framework
    job_dir: Path
    submitted: float  # epoch, just before submitting
    watches: list[poller_mod.Watch] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # our lines for the log
    output: list[str] = field(default_factory=list)  # the framework script's own output
    problem: str = ""
    plan: batch_mod.BatchPlan | jobscript.DeployJob | None = None
    ahead: bool = False


def framework_log_order(names: list[str], job_id: str) -> list[tuple[str, int | None]]:
    """A framework job's output files (names holding its id), rank 0 first: files named
    ``...node<k>`` / ``rank<k>`` / ``task<k>`` in rank order, then the others by name."""
    own = re.compile(rf"(?<![0-9A-Za-z]){re.escape(job_id)}(?![0-9])")
    ranked = []
    for name in names:
        if not own.search(name) or name.endswith(".done"):
            continue
        m = re.search(r"(?:node|rank|task)[-_.]?([0-9]+)", name)
        ranked.append(((0, int(m.group(1))) if m else (1, 0), name))
    return [(name, key[1] if key[0] == 0 else None) for key, name in sorted(ranked)]


def spec_key(spec: RunSpec) -> tuple[Any, ...]:
    """What a submitted-ahead job must share with the item's own plan to be used for it."""
    return (spec.model.name, spec.command(), tuple(sorted(spec.env.items())), str(spec.run_dir),
            spec.timeout)


@dataclass(frozen=True)
class SlurmPlan(Plan):
    """native: the batch and task scripts we write and the sbatch argv; framework: the
    model's framework script that submits its own jobs, with its environment; deploy: the
    ``slurm`` key's job (``deploy`` holds it, ``slurm_multi`` when the model's script is the job)."""

    path: str = "native"  # native | framework | deploy
    argv: tuple[str, ...] = ()
    cwd: str = ""
    env_added: Mapping[str, str] = field(default_factory=dict)
    batch: batch_mod.BatchPlan | None = None
    batch_script: str = ""
    task_script: str = ""
    queue_timeout: float | None = None
    deadline_s: float | None = None  # after submission: queue + run allowance + grace
    deploy: jobscript.DeployJob | None = None
    notes: tuple[str, ...] = ()

    @property
    def executor(self) -> str:
        return "slurm"

    def lines(self) -> list[str]:
        out = [f"  {self.path}: {shlex.join(self.argv)} (in {self.cwd})"]
        if self.queue_timeout:
            out.append(f"  queue timeout: {self.queue_timeout:g} s")
        if self.deadline_s:
            out.append(f"  deadline: {self.deadline_s:g} s after submission (then scancel)")
        out += [f"  note: {n}" for n in self.notes]
        if self.path == "framework":
            return [*out, "  environment added:", *render_env(self.env_added, "    ")]
        job = self.batch or self.deploy
        if job is not None and job.secret_env:
            out += ["  secret environment (not in the scripts: a 0600 file per node in the job folder, "
                    "sourced and deleted when the node's task starts):", *render_env(job.secret_env, "    ")]
        masked = "\n".join(_masked_assignment(line) for line in self.task_script.splitlines())
        batch = "\n".join(_masked_assignment(line) for line in self.batch_script.splitlines())
        out += ["  --- batch script ---", *("  " + ln for ln in batch.splitlines())]
        if not masked:
            return out
        return [*out, "  --- task script (run on every node) ---", *("  " + ln for ln in masked.splitlines())]


def _masked_assignment(line: str) -> str:
    """``export NAME=value`` as a plan prints it: the value masked as ``shown_value`` does."""
    if "=" not in line:
        return line
    name, value = line.split("=", 1)
    return f"{name}={shown_value(name, value)}"


def _node_folders(run_dir: Path, node_dir: Path, copies: int) -> None:
    """A fresh copy of the run folder per node (``node_dir/node<k>``, a shared file system)."""
    shutil.rmtree(node_dir, ignore_errors=True)
    for rank in range(copies):
        shutil.copytree(run_dir, node_dir / f"node{rank}", symlinks=True)


def _secret_files(plan: batch_mod.BatchPlan | jobscript.DeployJob) -> list[Path]:
    """Each node's file, and where a task in an image moves it (its run folder) for the container."""
    if not plan.secret_env:
        return []
    copies = plan.copies if isinstance(plan, jobscript.DeployJob) else plan.nodes
    return [p for rank in range(copies)
            for p in (plan.secret_path(rank), plan.node_dir / f"node{rank}" / secretenv.ENV_FILE)]


def sbatch_environ(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """sbatch's own environment: ours without the secret variables. sbatch hands its whole
    environment to the job (--export=ALL), and slurmctld keeps a copy while the job lives (and
    accounting may store it): the job gets its secrets from the 0600 files instead."""
    env = os.environ if env is None else env
    known = masking.usable(masking.marked_secrets(env))
    return {k: v for k, v in env.items() if not masking.is_secret(k, v, known)
            and k not in ("NAS_NODES", "MAD_MINIO", "MAD_AWS_S3")}


def _scrub_task_script(plan: batch_mod.BatchPlan | jobscript.DeployJob | None) -> None:
    """The task script (and a slurm_multi batch script) exports the model's environment,
    values included (0700 while the job runs). Once the job is over, the copies kept beside the
    log have them masked as the plan prints them; replaced, not rewritten in place, so a node
    still reading one keeps the old file."""
    if plan is None:
        return
    paths = [plan.task_path]
    if isinstance(plan, jobscript.DeployJob) and plan.kind == "slurm_multi":
        paths.append(plan.batch_path)
    for path in paths:
        if not path.is_file():
            continue
        try:
            text = path.read_text()
            masked = "\n".join(_masked_assignment(line) for line in text.splitlines()) + "\n"
            if masked != text:
                tmp = path.with_name(path.name + ".masked")
                tmp.write_text(masked)
                tmp.chmod(0o700)
                os.replace(tmp, path)
        except OSError:
            pass  # a shared file system gone away: the 0700 file stays as it was


class SlurmExecutor(Executor):
    name = "slurm"
    remote_gpus = True  # the nodes' GPUS_PER_NODE, not this host's
    submits_ahead = True

    def __init__(self, options: Any, context: Context, run_id: str, *,
                 poller: poller_mod.SlurmPoller | None = None) -> None:
        if "slurm_args" in context and "slurm" in context:
            raise UsageError("context keys 'slurm_args' (madengine 1.x) and 'slurm' (madengine 2.x) both given: "
                             "give one of them")
        # slurm_args: madengine 1.x's key, one setting for every model; else the `slurm` key of
        # the context and of each model card (deploy path), checked here and per model.
        self.args: args_mod.SlurmArgs | None = (args_mod.parse(context.get("slurm_args"))
                                                if "slurm_args" in context else None)
        self.settings: deploy_mod.SlurmSettings | None = None
        if self.args is None:
            raw, origin = deploy_mod.merged({}, context)
            self.settings = deploy_mod.parse(raw, origin, context.get("env_vars")
                                             if isinstance(context.get("env_vars"), Mapping) else None)
        self.options = options
        self.context = context
        self.run_id = run_id
        # Build once, run many: jobs run the manifest's (or --mad-use-image's) image, pulled on
        # every node by digest; the nodes never build.
        path = getattr(options, "manifest", None)
        self.manifest: manifest_mod.Manifest | None = manifest_mod.load(Path(path)) if path else None
        self.use_image: str = getattr(options, "use_image", "") or ""
        self.poller = poller or poller_mod.shared()
        where = "slurm_args" if self.args is not None else "slurm"
        try:
            self.known_partitions = self.poller.controller.partitions()
        except poller_mod.ControllerError as exc:
            raise UsageError(f"{where}: cannot list this cluster's partitions with sinfo: {exc}") from None
        if self.args is not None:
            args_mod.check_partition(self.args, self.known_partitions)
        elif self.settings is not None and self.settings.partition:
            self.check_partition(self.settings.partition, "context")
        self._ahead: dict[str, Submission] = {}
        self._secret_left: set[Path] = set()  # secret files written whose job is not over yet
        self._mine: list[poller_mod.Watch] = []  # every job this run submitted
        self._lock = threading.Lock()

    def check_partition(self, partition: str, origin: str) -> None:
        names = sorted({k.strip().rstrip("*") for k in self.known_partitions if k.strip()})
        if partition not in names:
            close = difflib.get_close_matches(partition, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UsageError(f"slurm.partition ({origin}): '{partition}' is not a partition of this cluster "
                             f"(sinfo knows: {', '.join(names) or 'none'}){hint}")

    @property
    def ahead_depth(self) -> int:
        """How many later items' jobs to queue ahead (slurm_args SUBMIT_AHEAD; the `slurm` key
        path submits each model's job in its turn: preflight must see the nodes as they are)."""
        return int(self.args.submit_ahead) if self.args is not None else 0

    def describe(self) -> str:
        a = self.args
        if a is None:
            st = self.settings or deploy_mod.SlurmSettings()
            return (f"slurm (the `slurm` key: partition {st.partition or '(default)'}, {st.nodes} node(s)"
                    f"{', time ' + st.time if st.time else ''}; model cards may add to it)")
        what = f"framework {a.framework}" if a.framework else f"{a.nodes} node(s)"
        return f"slurm (partition {a.partition}, {what}, time {a.time})"

    # ---- paths
    def job_dir(self, model_name: str) -> Path:
        rel = _relpath(model_name)
        return (Path(self.options.log_dir) / rel.parent / f"{rel.name}.slurm").resolve()

    def node_dir(self, model_name: str) -> Path:
        rel = _relpath(model_name)
        return (Path(self.options.work_dir) / rel.parent / f"{rel.name}.slurm").resolve()

    def framework_script(self, spec: RunSpec) -> Path:
        assert self.args is not None
        return spec.workspace / "scripts" / self.args.framework / "run.sh"

    # ---- plans (data, no side effects)
    def node_image(self, spec: RunSpec) -> container_mod.NodeImage | None:
        """The image every node's task runs in, and how the nodes get it: the manifest's entry
        (pulled by digest), --mad-use-image (``auto``: the card's ``env_vars.DOCKER_IMAGE_NAME``,
        as madengine's), slurm_args' DOCKER_IMAGE, the context's MAD_CONTAINER_IMAGE; None: the
        nodes' hosts. Raises ExecutorError."""
        if self.manifest is not None:
            entry = self.manifest.image_for(spec.model.name, spec.env.get("MAD_SYSTEM_GPU_ARCHITECTURE", ""))
            pull = entry.node_pull()
            if pull is None:
                raise ExecutorError(f"--mad-manifest {self.manifest.path} entry '{entry.key}': the image was never "
                                    "pushed to a registry, so the SLURM nodes cannot get it (build with --mad-registry)")
            return container_mod.NodeImage(pull.reference, pull, f"--mad-manifest entry '{entry.key}'")
        if self.use_image:
            name, source = manifest_mod.use_image(self.use_image, spec.model.name, spec.model.env_vars)
            return container_mod.NodeImage(name, source=source)
        if self.args is not None and self.args.docker_image:
            return container_mod.NodeImage(self.args.docker_image, source="slurm_args DOCKER_IMAGE")
        given = self.context.get("MAD_CONTAINER_IMAGE")
        if given:
            return container_mod.NodeImage(str(given), source="context MAD_CONTAINER_IMAGE")
        return None

    def job_image(self, spec: RunSpec) -> tuple[str, manifest_mod.NodePull | None]:
        """slurm_args: (image the task runs in, "" = the host; the manifest's pull by digest)."""
        image = self.node_image(spec)
        return (image.image, image.pull) if image is not None else ("", None)

    def batch_plan(self, spec: RunSpec) -> batch_mod.BatchPlan:
        a = self.args
        assert a is not None
        image, pull = self.job_image(spec)
        argv = list(spec.argv)
        if argv and argv[0] == "python3" and not image:
            argv[0] = sys.executable  # the same Python, on the shared file system
        argv = list(spec.command(argv))
        env, secret = secretenv.split(spec.env, secretenv.known_secrets(spec.workspace))
        return batch_mod.BatchPlan(
            job_name=batch_mod.job_name(self.run_id, spec.model.name), job_dir=self.job_dir(spec.model.name),
            node_dir=self.node_dir(spec.model.name), argv=tuple(argv), env=env, secret_env=secret, nodes=a.nodes,
            gpus_per_node=a.gpus_for(spec.model.n_gpus), partition=a.partition, time=a.time,
            account=a.account, qos=a.qos, nodelist=a.nodelist, exclude=a.exclude,
            extra_sbatch=a.extra_sbatch, docker_image=image, node_pull=pull, gpu_vendor=spec.gpu_vendor,
            workspace=spec.workspace,
            path_prefix="" if image else os.path.dirname(sys.executable),
            data_mounts=tuple((host, readonly) for host, _, readonly in spec.data_mounts),
        )

    def framework_env(self, spec: RunSpec) -> dict[str, str]:
        a = self.args
        assert a is not None
        env = {k: v for k, v in spec.env.items() if k not in batch_mod.NODE_VARS}
        env.update(a.framework_env(args_mod.model_name_from_args(spec.argv[2:], spec.model.name)))
        env.update({
            "MAD_SLURM_LOG_DIR": str(self.job_dir(spec.model.name)),
            "MAD_SLURM_JOB_NAME": batch_mod.job_name(self.run_id, spec.model.name),
            # sbatch's own defaults, for scripts that do not pass these options themselves
            "SBATCH_JOB_NAME": batch_mod.job_name(self.run_id, spec.model.name),
            "SBATCH_PARTITION": a.partition, "SBATCH_TIMELIMIT": a.time,
        })
        if a.account:
            env["SBATCH_ACCOUNT"] = a.account
        if a.qos:
            env["SBATCH_QOS"] = a.qos
        return env

    @staticmethod
    def deadline(queue_timeout: float, timeout: float | None, time_s: int) -> float:
        """Seconds after submission: the queue allowance, the run's own limit (the model's
        timeout, else the job's time limit), and a grace for SLURM's periodic limit checks."""
        run = min(timeout, float(time_s)) if timeout is not None else float(time_s)
        return queue_timeout + run + DEADLINE_GRACE_S

    def deploy_dir(self, spec: RunSpec, settings: deploy_mod.SlurmSettings) -> Path:
        """Where a `slurm`-key job's scripts and outputs go: ``slurm.output_dir`` (relative to
        the checkout; a card's must stay inside it), else beside the model's log."""
        if not settings.output_dir:
            return self.job_dir(spec.model.name)
        base = deployjob.inside(deploy_mod.key("output_dir"), settings.output_dir, spec.workspace,
                                from_card=settings.output_dir_from_card)
        rel = _relpath(spec.model.name)
        return (base / rel.parent / f"{rel.name}.slurm").resolve()

    def deploy_plan(self, spec: RunSpec) -> SlurmPlan:
        model = spec.model
        try:
            dist = distributed_settings(model.raw, self.context)
            settings = deploy_mod.settings_for(model.raw, self.context, dist)
            if settings.partition and settings.partition != (self.settings.partition if self.settings else ""):
                self.check_partition(settings.partition, "model card")
            image = self.node_image(spec)
            on_host = image is None or deployjob.is_slurm_multi(dist)  # slurm_multi's script runs on the host
            argv = list(spec.argv)
            if argv and argv[0] == "python3" and on_host:
                argv[0] = sys.executable  # the same Python, on the shared file system
            job = deployjob.build(dataclasses.replace(spec, argv=tuple(argv)), settings, dist,
                                  job_name=batch_mod.job_name(self.run_id, model.name),
                                  job_dir=self.deploy_dir(spec, settings), node_dir=self.node_dir(model.name),
                                  path_prefix=os.path.dirname(sys.executable) if on_host else "", image=image)
            env, secret = secretenv.split(job.env, secretenv.known_secrets(spec.workspace))
            job = dataclasses.replace(job, env=env, secret_env=secret)
            _, time_s = deploy_mod.resolve_time(settings, spec.timeout)
        except (UsageError, ValueError) as exc:
            raise ExecutorError(f"model '{model.name}': {exc}") from None
        notes = [f"launcher {job.launcher}" + (" (the model's own script is the job)" if job.kind == "slurm_multi"
                                                else f", one task per node on {job.nodes} node(s)")]
        if job.image is not None:
            notes.append(job.image.note() if job.kind == "tasks" else
                         f"every node pulls {job.image.image} before the script (DOCKER_IMAGE_NAME)")
        elif job.kind == "tasks":
            notes.append("no image given (--mad-manifest, --mad-use-image, MAD_CONTAINER_IMAGE): the tasks run on "
                         "the nodes' hosts")
        if settings.preflight:
            notes.append("preflight: idle nodes (sinfo) and a quick srun on each before submitting"
                         if not settings.nodelist else "preflight skipped: slurm.nodelist pins the nodes")
        if settings.ignored:
            notes.append(f"accepted for madengine compatibility, no effect here: slurm.{', slurm.'.join(settings.ignored)}")
        if job.results_dir is not None:
            notes.append(f"results: the first perf*.csv in {job.results_dir}")
        task = jobscript.task_script(job) if job.kind == "tasks" else ""
        return SlurmPlan(spec=spec, path="deploy", argv=("sbatch", "--parsable", str(job.batch_path)),
                         cwd=str(job.job_dir), batch_script=jobscript.batch_script(job), task_script=task,
                         queue_timeout=settings.queue_timeout,
                         deadline_s=self.deadline(settings.queue_timeout, spec.timeout, time_s), deploy=job,
                         notes=tuple(notes))

    def plan(self, spec: RunSpec) -> SlurmPlan:
        if self.args is None:
            return self.deploy_plan(spec)
        if self.args.framework:
            return SlurmPlan(spec=spec, path="framework", argv=("bash", str(self.framework_script(spec))),
                             cwd=str(self.job_dir(spec.model.name)), env_added=self.framework_env(spec),
                             queue_timeout=self.args.queue_timeout,
                             deadline_s=self.deadline(self.args.queue_timeout, spec.timeout, self.args.time_s))
        batch = self.batch_plan(spec)
        bad = batch_mod.bad_env_names({**batch.env, **batch.secret_env})
        if bad:
            field_ = ("models.json field 'env_vars'" if bad[0] in spec.model.env_vars
                      else "context 'docker_env_vars'")
            raise ExecutorError(f"model '{spec.model.name}': {field_}: environment variable name {bad[0]!r} "
                                "cannot be exported by the SLURM task script (letters, digits and _, "
                                "not starting with a digit)")
        try:
            batch_text, task_text = batch_mod.batch_script(batch), batch_mod.task_script(batch)
        except ValueError as exc:
            raise ExecutorError(f"model '{spec.model.name}': cannot write its SLURM job: {exc}") from None
        return SlurmPlan(spec=spec, path="native", argv=("sbatch", "--parsable", str(batch.batch_path)),
                         cwd=str(batch.job_dir), batch=batch, batch_script=batch_text, task_script=task_text,
                         queue_timeout=self.args.queue_timeout,
                         deadline_s=self.deadline(self.args.queue_timeout, spec.timeout, self.args.time_s))

    # ---- submission
    def submit_ahead(self, plan: Plan) -> None:
        """Queue a later item's job now (see slurm.ahead); its item picks it up."""
        assert isinstance(plan, SlurmPlan)
        with self._lock:
            if plan.spec.model.name in self._ahead:
                return
        sub = self.start(plan, Cancel())
        sub.ahead = True
        with self._lock:
            self._ahead[plan.spec.model.name] = sub

    def _take_ahead(self, spec: RunSpec) -> tuple[Submission | None, list[str]]:
        with self._lock:
            sub = self._ahead.pop(spec.model.name, None)
        if sub is None:
            return None, []
        if sub.key == spec_key(spec):
            return sub, []
        ids = [w.job_id for w in sub.watches]
        self._scancel(sub.watches)
        return None, [f"the job submitted ahead ({', '.join(ids) or 'none'}) was planned differently: "
                      "cancelled, submitting again"]

    def start(self, plan: SlurmPlan, cancel: Cancel) -> Submission:
        spec = plan.spec
        job_dir = Path(plan.cwd) if plan.path == "deploy" else self.job_dir(spec.model.name)
        shutil.rmtree(job_dir, ignore_errors=True)
        job_dir.mkdir(parents=True, exist_ok=True)
        kind = plan.path
        sub = Submission(spec_key(spec), kind, job_dir, time.time())
        try:
            if kind == "framework":
                self._start_framework(plan, sub, cancel)
            elif kind == "deploy":
                self._start_deploy(plan, sub)
            else:
                self._start_native(plan, sub)
        except UsageError as exc:
            sub.problem = str(exc)
        except OSError as exc:
            sub.problem = f"cannot prepare the SLURM job: {exc}"
        return sub

    def _start_native(self, splan: SlurmPlan, sub: Submission) -> None:
        spec, plan = splan.spec, splan.batch
        assert plan is not None
        sub.plan = plan
        if not spec.run_dir.is_dir():
            sub.problem = f"run folder {spec.run_dir} does not exist"
            return
        bad = batch_mod.bad_env_names({**plan.env, **plan.secret_env})
        if bad:
            field = ("models.json field 'env_vars'" if bad[0] in spec.model.env_vars
                     else "context 'docker_env_vars'")
            sub.problem = (f"model '{spec.model.name}': {field}: environment variable name {bad[0]!r} "
                           "cannot be exported by the SLURM task script (letters, digits and _, "
                           "not starting with a digit)")
            return
        batch_text, task_text = splan.batch_script, splan.task_script
        # Every node runs in its own copy of the run folder (shared file system).
        _node_folders(spec.run_dir, plan.node_dir, plan.nodes)
        plan.batch_path.write_text(batch_text)
        plan.task_path.write_text(task_text)
        plan.task_path.chmod(0o700)
        self._write_secrets(plan)
        argv = list(splan.argv)
        job_id = self._sbatch(argv, sub)
        if job_id is None:
            return
        sub.notes.append(f"SLURM job {job_id} submitted ({plan.nodes} node(s), partition {plan.partition}, "
                         f"time {plan.time}); batch script {plan.batch_path}")
        self._watch(sub, job_id, plan.job_name, plan.marker(job_id))

    def _start_deploy(self, splan: SlurmPlan, sub: Submission) -> None:
        spec, job = splan.spec, splan.deploy
        assert job is not None
        sub.plan = job
        if not spec.run_dir.is_dir():
            sub.problem = f"run folder {spec.run_dir} does not exist"
            return
        exclude = ""
        if job.settings.preflight and not job.settings.nodelist:
            def run(argv: list[str], timeout: float) -> str:
                return self.poller.controller.run(argv, timeout=timeout)

            try:
                verdict = preflight.check(job.settings, job.job_name + "-preflight", run)
            except poller_mod.ControllerError as exc:
                sub.problem = f"preflight: cannot list the nodes with sinfo: {exc}"
                return
            sub.notes.append(verdict.note())
            if verdict.problem:
                sub.problem = verdict.problem
                return
            exclude = preflight.excluded(job.settings, verdict)
        # Every node runs in its own copy of the run folder (shared file system).
        _node_folders(spec.run_dir, job.node_dir, job.copies)
        job.batch_path.write_text(splan.batch_script)
        job.batch_path.chmod(0o700 if job.kind == "slurm_multi" else 0o644)  # slurm_multi's holds the environment
        if splan.task_script:
            job.task_path.write_text(splan.task_script)
            job.task_path.chmod(0o700)
        self._write_secrets(job)
        argv = list(splan.argv)
        if exclude:  # the command line wins over the script's #SBATCH --exclude
            argv[2:2] = [f"--exclude={exclude}"]
        job_id = self._sbatch(argv, sub)
        if job_id is None:
            return
        sub.notes.append(f"SLURM job {job_id} submitted ({job.nodes} node(s), partition {job.partition}, "
                         f"time {job.time}, launcher {job.launcher}); batch script {job.batch_path}")
        self._watch(sub, job_id, job.job_name, job.marker(job_id))

    def _write_secrets(self, plan: batch_mod.BatchPlan | jobscript.DeployJob) -> None:
        """One 0600 file per node; OSError/UsageError end the submission with the reason."""
        files = _secret_files(plan)
        with self._lock:
            self._secret_left.update(files)
        for path in files[::2]:  # each node's file in the job folder (the others are where it moves)
            try:
                secretenv.write(path, plan.secret_env)
            except ValueError as exc:
                raise UsageError(f"cannot write the secret environment: {exc}") from None

    def _remove_secrets(self, plan: batch_mod.BatchPlan | jobscript.DeployJob | None) -> None:
        """The job is over (or never ran): its nodes' secret files go, read or not."""
        if plan is None:
            return
        for path in _secret_files(plan):
            secretenv.remove(path)
            with self._lock:
                self._secret_left.discard(path)

    def _sbatch(self, argv: list[str], sub: Submission) -> str | None:
        """Submit with ``sbatch --parsable``: the job id, or None with ``sub.problem`` set."""
        sub.submitted = time.time()
        try:
            out = self.poller.controller.run(argv, env=sbatch_environ())
        except poller_mod.ControllerError as exc:
            sub.problem = f"sbatch refused the job: {str(exc).removeprefix('sbatch: ')}"
            return None
        job_id = out.strip().splitlines()[-1].split(";")[0].strip() if out.strip() else ""
        if not job_id.isdigit():
            sub.problem = f"sbatch --parsable printed no job id: {out.strip()[:200]!r}"
            return None
        return job_id

    def _start_framework(self, splan: SlurmPlan, sub: Submission, cancel: Cancel) -> None:
        assert self.args is not None
        script = Path(splan.argv[1])
        if not script.is_file():
            sub.problem = (f"slurm_args FRAMEWORK {self.args.framework!r}: {script} not found "
                           f"(frameworks live in scripts/<FRAMEWORK>/run.sh)")
            return
        env = dict(os.environ)
        env.update(splan.env_added)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        sub.notes.append(f"framework {self.args.framework}: bash {script} (MODEL_NAME={env['MODEL_NAME']}, "
                         f"logs in {sub.job_dir})")
        sub.submitted = time.time()
        try:
            proc = subprocess.Popen(list(splan.argv), cwd=splan.cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            sub.problem = f"cannot start {script}: {exc.strerror or exc}"
            return
        out: list[bytes] = []
        stream = proc.stdout
        assert stream is not None
        reader = threading.Thread(target=lambda: out.extend(iter(lambda: stream.readline(MAX_LINE), b"")),
                                  daemon=True)
        reader.start()
        if process.wait(proc, cancel, process.Deadline(SUBMIT_TIMEOUT_S)) is not None:
            process.kill_group(proc.pid, leader=proc)
        proc.wait()
        reader.join(timeout=5)
        sub.output = [b.decode("utf-8", "replace").rstrip("\n") for b in out]
        ids = job_ids_from_output("\n".join(sub.output))
        for job_id in ids:
            self._watch(sub, job_id, None, None)
        if ids:
            sub.notes.append(f"framework {self.args.framework} submitted SLURM job(s) {', '.join(ids)}")
        if cancel:
            sub.problem = "interrupted while the framework script was submitting"
        elif proc.returncode != 0:
            sub.problem = f"scripts/{self.args.framework}/run.sh exited {proc.returncode} while submitting"
        elif not ids:
            sub.problem = (f"scripts/{self.args.framework}/run.sh submitted no job (its output has no "
                           "'Submitted batch job N' line and no sbatch --parsable id)")
        if sub.problem and sub.watches:
            self._scancel(sub.watches)

    def _watch(self, sub: Submission, job_id: str, name: str | None, marker: Path | None) -> None:
        w = self.poller.watch(job_id, name, sub.submitted, marker)
        sub.watches.append(w)
        with self._lock:
            self._mine.append(w)

    # ---- following the job(s)
    def run(self, plan: Plan, sink: OutputSink, cancel: Cancel) -> RunOutcome:
        assert isinstance(plan, SlurmPlan)
        spec = plan.spec
        t0 = time.monotonic()
        sub, notes = self._take_ahead(spec)
        for note in notes:
            sink.note(note)
        if sub is None:
            sub = self.start(plan, cancel)
        elif sub.ahead:
            sink.note("submitted ahead of its turn (slurm_args SUBMIT_AHEAD)")
        for note in sub.notes:
            sink.note(note)
        for line in sub.output:
            sink.write(line)
        props: dict[str, Any] = {"partition": self.args.partition if self.args is not None
                                 else plan.deploy.partition if plan.deploy is not None else ""}
        if plan.deploy is not None:
            props["launcher"] = plan.deploy.launcher
        queue_timeout = plan.queue_timeout or args_mod.DEFAULT_QUEUE_TIMEOUT_S
        if sub.problem:
            self._remove_secrets(sub.plan)
            return RunOutcome(None, time.monotonic() - t0, problem=sub.problem, properties=props)
        timed_out = interrupted = False
        problem = ""
        while True:
            live = [w for w in sub.watches if not w.done.is_set()]
            if not live:
                break
            live[0].done.wait(0.2)
            now = time.time()
            if cancel:
                interrupted = True
                sink.note("interrupted: cancelling every job this run submitted")
                self._scancel(self._live_mine())
                break
            started = [w.started for w in sub.watches if w.started is not None]
            if spec.timeout is not None and started and now - min(started) > spec.timeout:
                timed_out = True
                sink.note(f"timeout: running for more than {spec.timeout:g} s, scancel {self._ids(live)}")
                self._scancel(live)
                break
            for w in live:
                if w.started is None and (w.record is None or w.record.pending) \
                        and now - w.submitted > queue_timeout:
                    reason = w.record.reason if w.record else "unknown"
                    problem = (f"SLURM job {w.job_id} still PENDING after {queue_timeout:g} s "
                               f"(Reason={reason}); cancelled")
                    break
            if not problem and plan.deadline_s is not None and now - sub.submitted > plan.deadline_s:
                problem = (f"deadline: SLURM job(s) {self._ids(live)} not finished {plan.deadline_s:g} s after "
                           f"submission (queue {queue_timeout:g} s + run limit + {DEADLINE_GRACE_S:g} s grace, "
                           f"state {','.join(w.state for w in live)}); cancelled")
            if problem:
                sink.note(problem)
                self._scancel(live)
                break
            if self.poller.down_for() > CONTROLLER_GRACE_S:
                problem = (f"SLURM controller unreachable for {self.poller.down_for():.0f} s: "
                           f"{self.poller.last_error}")
                self._scancel(live)
                break
        if timed_out or interrupted or problem:  # give the cancellation a moment to be recorded
            limit = time.monotonic() + (3.0 if interrupted else CANCEL_WAIT_S)
            for w in sub.watches:
                w.done.wait(max(0.0, limit - time.monotonic()))
        result_time = time.time()
        facts, run_s, nnodes = self._properties(sub, result_time)
        props.update(facts)
        self._copy_back(spec, sub)
        self._write_logs(sub, sink)
        got = self._gather(sub, spec) if plan.deploy is not None and not (timed_out or interrupted or problem) else None
        if got is not None:
            props.update(got.properties)
            for warning in got.warnings:
                sink.note(f"warning: {warning}")
        self._remove_secrets(sub.plan)
        _scrub_task_script(sub.plan)
        for w in sub.watches:
            self.poller.forget(w)
        duration = run_s or time.monotonic() - t0
        if interrupted:
            return RunOutcome(None, duration, interrupted=True, properties=props, nnodes=nnodes)
        if timed_out:
            return RunOutcome(None, duration, timed_out=True, properties=props, nnodes=nnodes)
        if problem:
            return RunOutcome(None, duration, problem=problem, properties=props, nnodes=nnodes)
        for w in sub.watches:
            if w.gone:
                return RunOutcome(None, duration, problem=w.gone, properties=props, nnodes=nnodes)
            if w.final is not None and w.final.state != "COMPLETED":
                pulled = self._pull_failure(sub, w.job_id)
                return RunOutcome(None, duration, problem=(f"{pulled}; " if pulled else "") + describe_final(w.final),
                                  properties=props, nnodes=nnodes)
        if got is not None and got.problem:
            return RunOutcome(None, duration, problem=got.problem, properties=props, nnodes=nnodes)
        return RunOutcome(0, duration, properties=props, nnodes=nnodes, rows=got.rows if got is not None else None)

    def _gather(self, sub: Submission, spec: RunSpec) -> gather.Gathered | None:
        """The `slurm` key's results: per node (tasks) or from results_dir (slurm_multi)."""
        job = sub.plan
        if not isinstance(job, jobscript.DeployJob) or not sub.watches:
            return None
        if job.kind == "slurm_multi":
            return gather.slurm_multi(job.results_dir, spec.model.name, newer_than=sub.submitted)
        job_id = sub.watches[0].job_id
        return gather.nodes([job.node_output(job_id, k) for k in range(job.nodes)],
                            [job.node_dir / f"node{k}" for k in range(job.nodes)], spec.model.name,
                            spec.model.multiple_results)

    @staticmethod
    def _pull_failure(sub: Submission, job_id: str) -> str:
        """A node that could not pull the job's image, named (its output says so), else ""."""
        if sub.plan is None:
            return ""
        files = [sub.plan.node_output(job_id, k) for k in range(sub.plan.nodes)] + [sub.plan.batch_output(job_id)]
        return container_mod.pull_failure([file_lines(path) for path in files])

    @staticmethod
    def _ids(watches: list[poller_mod.Watch]) -> str:
        return ",".join(w.job_id for w in watches)

    def _live_mine(self) -> list[poller_mod.Watch]:
        with self._lock:
            return [w for w in self._mine if not w.done.is_set()]

    def _scancel(self, watches: list[poller_mod.Watch]) -> None:
        ids = [w.job_id for w in watches if not w.done.is_set()]
        if not ids:
            return
        try:
            self.poller.controller.scancel(ids)
        except poller_mod.ControllerError:
            pass  # the controller may be restarting; close() tries again
        self.poller.kick()

    def _properties(self, sub: Submission, result_time: float) -> tuple[dict[str, Any], float | None, int | None]:
        """(JUnit facts, the job's run time from the accounting, the nodes it used)."""
        recs = [w.final or w.record for w in sub.watches]
        known = [r for r in recs if r is not None]
        props: dict[str, Any] = {
            "slurm_job_id": ",".join(w.job_id for w in sub.watches),
            "slurm_state": ",".join(w.state for w in sub.watches),
        }
        nodes = [r.nodes for r in known if r.nodes]
        if nodes:
            props["nodes"] = ",".join(nodes)
            nnodes: int | None = sum(len(expand_hostlist(n)) for n in nodes)
        else:
            nnodes = None
        parts = [r.partition for r in known if r.partition]
        if parts:
            props["partition"] = ",".join(dict.fromkeys(parts))
        run_s: float | None = None
        submits = [r.submit for r in known if r.submit is not None]
        starts = [r.start for r in known if r.start is not None]
        ends = [r.end for r in known if r.end is not None]
        if submits and starts:
            props["queue_wait_s"] = f"{max(0.0, min(starts) - min(submits)):.0f}"
        if starts and ends:
            run_s = max(0.0, max(ends) - min(starts))
            props["run_s"] = f"{run_s:.0f}"
            props["slurm_result_delay_s"] = f"{result_time - max(ends):.2f}"
        markers = [w.marker for w in sub.watches if w.marker is not None and w.marker.exists()]
        if markers:
            props["slurm_marker_delay_s"] = f"{result_time - max(m.stat().st_mtime for m in markers):.2f}"
        if sub.plan is not None:
            props["slurm_batch_script"] = str(sub.plan.batch_path)
        return props, run_s, nnodes

    def _copy_back(self, spec: RunSpec, sub: Submission) -> None:
        """The multiple_results CSV that rank 0 wrote, and its profiling tools' outputs and
        missing-binary note, where the session reads them."""
        if sub.plan is not None and spec.run_dir.is_dir():
            node0 = sub.plan.node_dir / "node0"
            for src in [*tools_mod.outputs(node0), node0 / tools_mod.MISSING_FILE]:
                if src.is_dir():
                    shutil.copytree(src, spec.run_dir / src.name, symlinks=True, dirs_exist_ok=True)
                elif src.is_file():
                    shutil.copyfile(src, spec.run_dir / src.name)
        csv = spec.model.multiple_results
        if not csv or sub.plan is None:
            return
        src = sub.plan.node_dir / "node0" / csv
        if src.is_file() and spec.run_dir.is_dir():
            dest = spec.run_dir / csv
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)

    def _log_files(self, sub: Submission) -> list[tuple[str, Path, bool]]:
        """(prefix, file, read for performance) in the order they go into the model's log:
        rank 0 first. A `slurm`-key job's performance comes from node 0 (or, slurm_multi, the
        job's own output) only: a worker node's number is never the run's."""
        out: list[tuple[str, Path, bool]] = []
        deployed = isinstance(sub.plan, jobscript.DeployJob)
        for w in sub.watches:
            rec = w.final or w.record
            hosts = expand_hostlist(rec.nodes) if rec and rec.nodes else []
            if sub.plan is not None:
                for rank in range(sub.plan.nodes):
                    label = hosts[rank] if rank < len(hosts) else f"node{rank}"
                    out.append((label, sub.plan.node_output(w.job_id, rank), not deployed or rank == 0))
                out.append(("batch", sub.plan.batch_output(w.job_id), True))
                continue
            names = [p.name for p in sub.job_dir.iterdir() if p.is_file()]
            for name, index in framework_log_order(names, w.job_id):
                label = hosts[index] if index is not None and index < len(hosts) else name
                out.append((label if len(sub.watches) == 1 else f"{w.job_id} {label}", sub.job_dir / name, True))
        return out

    def _write_logs(self, sub: Submission, sink: OutputSink) -> None:
        files = [(label, p, perf) for label, p, perf in self._log_files(sub) if p.is_file()]
        if not files:
            sink.note(f"no job output found in {sub.job_dir}")
            return
        for label, path, perf in files:
            sink.note(f"--- {path.name} ({label}) ---")
            feed = LineFeed(sink, _labelled(sink, label, perf))
            try:
                with open(path, "rb") as fh:
                    while chunk := fh.read(READ_CHUNK):
                        feed.feed(chunk)
            except OSError as exc:
                sink.note(f"cannot read {path}: {exc.strerror or exc}")
            feed.end()

    def close(self) -> None:
        """Session end: cancel whatever this run submitted that still runs; record the calls."""
        for attempt in range(4):  # the controller may be restarting: a few tries, then give up
            live = self._live_mine()
            if not live:
                break
            try:
                self.poller.controller.scancel([w.job_id for w in live])
                break
            except poller_mod.ControllerError:
                time.sleep(2 ** attempt)
        for w in list(self._mine):
            self.poller.forget(w)
        with self._lock:
            left, self._secret_left = set(self._secret_left), set()
        for path in left:  # jobs submitted ahead whose item never ran, a run cut short
            secretenv.remove(path)
        try:
            log_dir = Path(self.options.log_dir)
            log_dir.mkdir(parents=True, exist_ok=True)
            worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
            stats = self.poller.stats()
            stats["jobs"] = len(self._mine)
            (log_dir / f"slurm_poller.{worker}.json").write_text(json.dumps(stats, indent=1))
        except OSError:
            pass


def _labelled(sink: OutputSink, label: str, perf: bool) -> Callable[[str], None]:
    """Writes a piece of a job's output file into the model's log, marked with its node."""
    def emit(piece: str) -> None:
        sink.write(f"[{label}] {piece}", perf=perf)
    return emit
