"""The batch script of a native SLURM run, as text (pure: a plan in, text out).

Two files, both kept beside the model's log:

``job.sbatch``  the ``#SBATCH`` header, then one ``srun`` that starts ``task.sh`` once on every
                node (one task per node; each node's output in its own file, ``%t`` = node
                rank) and an EXIT trap that writes ``<jobid>.done`` with the exit status, so
                the poller learns that the job ended from a file instead of asking slurmctld.
``task.sh``     one node's part: the torchrun rendezvous (master = the job's first node),
                ``MAD_MULTI_NODE_RUNNER``, the model's environment, then the model's script
                in that node's copy of the run folder, on the node or in ``DOCKER_IMAGE``
                (``container.py``: the pull, the run, the container's removal).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pytest_madengine.executors import secretenv
from pytest_madengine.executors.docker.manifest import NodePull
from pytest_madengine.executors.slurm.container import ContainerTask, NodeImage, cleanup_step

# Set per node by task.sh, never copied from the submitting host.
NODE_VARS = ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "MAD_GPU_IDS",
             "MAD_MULTI_NODE_RUNNER", "MAD_RUNTIME_NGPUS", "MASTER_ADDR", "MASTER_PORT", "NNODES",
             "NODE_RANK", "MAD_DEPLOYMENT_TYPE")
RENDEZVOUS_PORT_BASE = 20000  # + job id % 10000: distinct for concurrent jobs, below the ephemeral range
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class JobFiles:
    """Where a job's files lie in its folder: the scripts, per-node outputs, end markers. One
    layout for every kind of job, since the batch script's traps and the poller both rely on it."""

    job_dir: Path

    @property
    def batch_path(self) -> Path:
        return self.job_dir / "job.sbatch"

    @property
    def task_path(self) -> Path:
        return self.job_dir / "task.sh"

    def marker(self, job_id: str) -> Path:
        return self.job_dir / f"{job_id}.done"

    def node_output(self, job_id: str, rank: int) -> Path:
        return self.job_dir / f"{job_id}.node{rank}.out"

    def batch_output(self, job_id: str) -> Path:
        return self.job_dir / f"{job_id}.batch.out"

    def secret_path(self, rank: int) -> Path:
        """Node ``rank``'s secret environment (0600), sourced and deleted by its task at the start."""
        return self.job_dir / f".secret-env.node{rank}"

    def secret_word(self) -> str:
        """``secret_path`` of the node a task script runs on, as a shell word."""
        return shlex.quote(str(self.job_dir)) + '/.secret-env.node"$NODE_RANK"'


@dataclass(frozen=True)
class BatchPlan(JobFiles):
    job_name: str
    job_dir: Path  # scripts, per-node outputs, end markers
    node_dir: Path  # node k runs in node_dir/node<k> (copies of the run folder)
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    nodes: int = 1
    gpus_per_node: int = 0
    partition: str = ""
    time: str = ""
    account: str = ""
    qos: str = ""
    nodelist: str = ""
    exclude: str = ""
    extra_sbatch: tuple[str, ...] = ()
    docker_image: str = ""
    gpu_vendor: str = "NONE"
    workspace: Path = Path("/")
    path_prefix: str = ""  # prepended to PATH on the node (the submitting Python's bin/)
    data_mounts: tuple[tuple[str, bool], ...] = ()  # (host folder, read-only): served data, same path inside
    node_pull: NodePull | None = None  # a manifest's image: every node pulls docker_image by its digest
    # Secret variables (``masking``): not in the scripts but in a 0600 file per node (secret_path).
    secret_env: Mapping[str, str] = field(default_factory=dict, repr=False)


def job_name(run_id: str, model: str) -> str:
    """``mad-<run id>-<model>``: unique per run, so accounting records are told apart."""
    return f"mad-{run_id}-" + re.sub(r"[^A-Za-z0-9._-]+", "_", model)[:100]


def _sbatch_value(value: str) -> str:
    # #SBATCH lines are split by sbatch itself, which honours double quotes.
    if re.fullmatch(r"[A-Za-z0-9_./:@,\[\]%+=\-]+", value):
        return value
    if '"' in value or "\n" in value:
        raise ValueError(f"cannot put {value!r} in an #SBATCH line")
    return f'"{value}"'


def batch_script(plan: BatchPlan) -> str:
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={_sbatch_value(plan.job_name)}",
        f"#SBATCH --nodes={plan.nodes}",
        "#SBATCH --ntasks-per-node=1",
    ]
    if plan.gpus_per_node > 0:
        lines.append(f"#SBATCH --gpus-per-node={plan.gpus_per_node}")
    if plan.partition:
        lines.append(f"#SBATCH --partition={_sbatch_value(plan.partition)}")
    if plan.time:
        lines.append(f"#SBATCH --time={_sbatch_value(plan.time)}")
    lines.append(f"#SBATCH --output={_sbatch_value(str(plan.job_dir / '%j.batch.out'))}")
    for opt, value in (("account", plan.account), ("qos", plan.qos), ("nodelist", plan.nodelist),
                       ("exclude", plan.exclude)):
        if value:
            lines.append(f"#SBATCH --{opt}={_sbatch_value(value)}")
    lines += [f"#SBATCH {extra}" for extra in plan.extra_sbatch]
    marker = q(str(plan.job_dir)) + '/"$SLURM_JOB_ID"'
    # The trap's body holds quoted paths; the body itself is quoted once more as trap's argument.
    on_exit = (f'rc=$?; echo "$rc $SLURM_JOB_NODELIST $SLURM_JOB_PARTITION" >{marker}.done.tmp '
               f"&& mv -f {marker}.done.tmp {marker}.done")
    lines += [
        "# Written by pytest-madengine; kept beside the model's log.",
        "# The end marker lets the poller see the end without asking slurmctld.",
        f"trap {q(on_exit)} EXIT",
        "# One task per node; --kill-on-bad-exit stops every node when one fails.",
        "srun --ntasks-per-node=1 --kill-on-bad-exit=1 "
        f"--output={q(str(plan.job_dir / '%j.node%t.out'))} bash {q(str(plan.task_path))}",
    ]
    if plan.docker_image:
        lines += cleanup_step()
    return "\n".join(lines) + "\n"


def runner(nproc: int) -> str:
    """madengine 2.x's multi-node torchrun, expanded on the node (variables set by task.sh)."""
    return ("torchrun --nnodes=$NNODES --nproc_per_node=" + str(max(1, nproc))
            + " --node_rank=$NODE_RANK --master_addr=$MASTER_ADDR --master_port=$MASTER_PORT")


def bad_env_names(env: Mapping[str, str]) -> list[str]:
    """Names in ``env`` that task.sh would have to export but a shell cannot."""
    return [k for k in env if k not in NODE_VARS and not _ENV_NAME.fullmatch(k)]


def task_script(plan: BatchPlan) -> str:
    q = shlex.quote
    nproc = max(1, plan.gpus_per_node)
    env = {k: v for k, v in plan.env.items() if k not in NODE_VARS}
    for key in bad_env_names(env):
        raise ValueError(f"environment variable name {key!r} cannot be exported")
    lines = [
        "#!/bin/bash",
        "# One node of a pytest-madengine SLURM job: node rank $SLURM_NODEID of $SLURM_NNODES.",
        "set -u",
        "NODE_RANK=$SLURM_NODEID",
        "NNODES=$SLURM_NNODES",
        "# torchrun rendezvous: the master is the job's first node, at the address it resolves to,",
        "# else the address slurmctld knows it by (NodeAddr), else its name.",
        'MASTER_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        'MASTER_ADDR=$(getent hosts "$MASTER_NODE" | awk \'{print $1; exit}\')',
        'if [ -z "$MASTER_ADDR" ]; then',
        '  MASTER_ADDR=$(scontrol show node "$MASTER_NODE" -o 2>/dev/null | sed -n \'s/.*NodeAddr=\\([^ ]*\\).*/\\1/p\')',
        "fi",
        'MASTER_ADDR=${MASTER_ADDR:-$MASTER_NODE}',
        f"MASTER_PORT=$(({RENDEZVOUS_PORT_BASE} + SLURM_JOB_ID % 10000))",
        "export NODE_RANK NNODES MASTER_ADDR MASTER_PORT",
        f"export MAD_MULTI_NODE_RUNNER=\"{runner(nproc)}\"",
        f"export MAD_RUNTIME_NGPUS={plan.gpus_per_node}",
        "export MAD_DEPLOYMENT_TYPE=slurm MAD_SLURM_JOB_ID=$SLURM_JOB_ID",
    ]
    lines += [f"export {k}={q(v)}" for k, v in sorted(env.items())]
    secret = {k: v for k, v in plan.secret_env.items() if k not in NODE_VARS}
    if secret and not plan.docker_image:
        lines += ["# The secret variables: this node's 0600 file, deleted once read.",
                  *secretenv.source_lines(plan.secret_word())]
    if plan.path_prefix:
        lines.append(f'export PATH={q(plan.path_prefix)}:"$PATH"')
    workdir = q(str(plan.node_dir)) + '/node"$NODE_RANK"'
    lines.append(f"cd {workdir} || {{ echo \"pytest-madengine: no run folder $PWD/node$NODE_RANK\" >&2; exit 2; }}")
    argv = " ".join(q(a) for a in plan.argv)
    if not plan.docker_image:
        lines.append(f"exec {argv}")
        return "\n".join(lines) + "\n"
    names = (*env, "NODE_RANK", "NNODES", "MASTER_ADDR", "MASTER_PORT", "MAD_MULTI_NODE_RUNNER", "MAD_RUNTIME_NGPUS",
             "MAD_DEPLOYMENT_TYPE", "MAD_SLURM_JOB_ID", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
             "CUDA_VISIBLE_DEVICES")
    task = ContainerTask(NodeImage(plan.docker_image, plan.node_pull), plan.workspace, names, plan.data_mounts,
                         plan.gpus_per_node, plan.gpu_vendor)
    if secret:
        # Not -e: the container's config would show the values. The file moves into the run
        # folder, where the container's first command sources and deletes it.
        lines.append(f"mv -f {plan.secret_word()} {workdir}/{secretenv.ENV_FILE} || exit {secretenv.MISSING_EXIT}")
        argv = " ".join(q(a) for a in secretenv.loader()) + " " + argv
    lines += task.lines(workdir, argv)
    return "\n".join(lines) + "\n"
