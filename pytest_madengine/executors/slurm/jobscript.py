"""The job of a ``slurm``-key deployment, as data and as script text (pure: no I/O).

Two kinds:

``tasks``        our batch script starts ``task.sh`` once per node (``srun``, one task per
                 node). Each node computes its place from SLURM (NODE_RANK = SLURM_NODEID,
                 MASTER_ADDR = the address of the first host of SLURM_JOB_NODELIST) and
                 exports the launcher's per-node form, built before submission by the same
                 launcher functions the local and Docker backends use, so runner and variables
                 are identical everywhere. Host addresses are only known in the job: the
                 launcher is given placeholder addresses, and each becomes a quoted reference
                 to the variable the task script sets (``"$MAD_HOST_<k>"``; the master is
                 node 0). Every other value is ``shlex.quote``-d. With an image (a manifest,
                 ``--mad-use-image``, ``MAD_CONTAINER_IMAGE``) the script computes all of
                 that on the node's host, then runs the model's command in the image
                 (``container.py``: the pull, ``docker run`` with every exported variable
                 passed by name, the launcher's setup inside, the container removed on every
                 path); without one it runs on the node's host.
``slurm_multi``  the model's own ``.slurm``/``.sbatch`` script is the job: our wrapper exports
                 the environment (the card's ``env_vars``, ``xP``/``yD``), pulls the image on
                 every node (the same pull as the tasks'), then runs the script once with
                 ``bash`` in the allocation (madengine 2.x runs it the same way).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pytest_madengine.executors import secretenv
from pytest_madengine.executors.slurm.batch import JobFiles, _sbatch_value
from pytest_madengine.executors.slurm.container import ContainerTask, NodeImage, cleanup_step
from pytest_madengine.executors.slurm.deploy import SlurmSettings

# Hosts are known only in the job: the launcher gets addresses from 240.0.0.0/4 (reserved,
# never a real host), and each becomes a reference to the variable the task script sets.
_PLACEHOLDER = re.compile(r"(?<![0-9.])240\.77\.(\d+)\.(\d+)(?![0-9])")


def host_placeholder(k: int) -> str:
    """Node k's address, before the job knows it."""
    return f"240.77.{k // 256}.{k % 256}"


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Set by the task script itself, never copied from the submitting host.
NODE_VARS = ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "MAD_GPU_IDS",
             "MAD_RUNTIME_NGPUS", "MAD_DEPLOYMENT_TYPE", "MAD_SLURM_JOB_ID")


@dataclass(frozen=True)
class NodeForm:
    """One node's part of the launcher: variables, files for its run folder, setup commands
    (values may hold the placeholders)."""

    env: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)
    setup: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class DeployJob(JobFiles):
    kind: str  # tasks | slurm_multi
    job_name: str
    job_dir: Path  # batch script, task script, outputs, end markers
    node_dir: Path  # node k runs in node_dir/node<k>
    argv: tuple[str, ...]  # the model's command, run in its node folder
    settings: SlurmSettings
    time: str
    gpus_per_node: int
    launcher: str
    env: Mapping[str, str] = field(default_factory=dict)  # every node (user values win over the launcher's)
    ranks: tuple[NodeForm, ...] = ()  # per node rank (tasks)
    path_prefix: str = ""  # the submitting Python's bin/, first on PATH on the nodes
    image: NodeImage | None = None  # tasks: each node's task runs in it; slurm_multi: pulled on every node
    workspace: Path = Path("/")  # the checkout, mounted in the containers at its path
    gpu_vendor: str = "NONE"
    data_mounts: tuple[tuple[str, bool], ...] = ()  # (host folder, read-only): served data, same path inside
    results_dir: Path | None = None  # slurm_multi: where its perf*.csv is read
    # Secret variables (``masking``): not in the scripts but in a 0600 file per node (secret_path).
    secret_env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def nodes(self) -> int:
        return self.settings.nodes

    @property
    def copies(self) -> int:
        """Run folders to prepare: one per node, one for slurm_multi (its script runs once)."""
        return 1 if self.kind == "slurm_multi" else self.nodes

    @property
    def partition(self) -> str:
        return self.settings.partition or "(default)"


def shell_word(value: str) -> str:
    """``value`` as one shell word: quoted, placeholders turned into quoted variable references."""
    parts: list[str] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(value):
        if m.start() > pos:
            parts.append(shlex.quote(value[pos:m.start()]))
        parts.append(f'"$MAD_HOST_{int(m.group(1)) * 256 + int(m.group(2))}"')
        pos = m.end()
    if pos < len(value) or not parts:
        parts.append(shlex.quote(value[pos:]))
    return "".join(parts)


def bad_env_names(env: Mapping[str, str]) -> list[str]:
    return [k for k in env if not _ENV_NAME.fullmatch(k)]


def _header(job: DeployJob, nodes: int) -> list[str]:
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={_sbatch_value(job.job_name)}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --time={_sbatch_value(job.time)}",
    ]
    if job.gpus_per_node > 0:
        lines.append(f"#SBATCH --gpus-per-node={job.gpus_per_node}")
    for opt, value in job.settings.sbatch_options():
        lines.append(f"#SBATCH {opt}" + (f"={_sbatch_value(value)}" if value else ""))
    lines.append(f"#SBATCH --output={_sbatch_value(str(job.job_dir / '%j.batch.out'))}")
    q = shlex.quote
    marker = q(str(job.job_dir)) + '/"$SLURM_JOB_ID"'
    on_exit = (f'rc=$?; echo "$rc $SLURM_JOB_NODELIST $SLURM_JOB_PARTITION" >{marker}.done.tmp '
               f"&& mv -f {marker}.done.tmp {marker}.done")
    lines += [
        "# Written by pytest-madengine (the `slurm` key); kept beside the model's log.",
        f"trap {q(on_exit)} EXIT",
    ]
    for module in job.settings.modules:
        lines.append(f"module load {q(module)} || {{ echo {q(f'pytest-madengine: module load {module} failed')} >&2; "
                     "exit 2; }")
    return lines


def batch_script(job: DeployJob) -> str:
    """The sbatch script: header, then one task per node (tasks) or the model's script (slurm_multi)."""
    q = shlex.quote
    lines = _header(job, job.nodes)
    if job.kind == "tasks":
        lines += [
            "# One task per node; --kill-on-bad-exit stops every node when one fails.",
            "srun --ntasks-per-node=1 --kill-on-bad-exit=1 "
            f"--output={q(str(job.job_dir / '%j.node%t.out'))} bash {q(str(job.task_path))}",
        ]
        if job.image is not None:
            lines += cleanup_step()
        return "\n".join(lines) + "\n"
    lines += _common_env(job, shlex.quote(str(job.secret_path(0))))  # the script runs on the host
    pull = job.image.pull_lines() if job.image is not None else []
    if pull:
        msg = q(f"pytest-madengine: docker pull {job.image.image if job.image else ''} failed on a node")
        lines += [
            "# A registry image: pulled on every node before the script starts.",
            'srun --nodes="$SLURM_NNODES" --ntasks="$SLURM_NNODES" --ntasks-per-node=1 '
            f"bash -c {q('; '.join(pull))} || {{ echo {msg} >&2; exit 3; }}",
        ]
    workdir = q(str(job.node_dir / "node0"))
    lines += [
        f"cd {workdir} || exit 2",
        "# The model's own script is the job: run once, in this allocation.",
        " ".join(q(a) for a in job.argv),
    ]
    return "\n".join(lines) + "\n"


def _common_env(job: DeployJob, secret_word: str, *, in_image: bool = False) -> list[str]:
    q = shlex.quote
    lines = [f"export MAD_RUNTIME_NGPUS={job.gpus_per_node} MAD_DEPLOYMENT_TYPE=slurm "
             'MAD_SLURM_JOB_ID="$SLURM_JOB_ID" MAD_IN_SLURM_JOB=1']
    if job.settings.network_interface:
        iface = q(job.settings.network_interface)
        lines.append(f"export NCCL_SOCKET_IFNAME={iface} GLOO_SOCKET_IFNAME={iface}")
    if job.settings.shared_data:
        lines.append(f"export MAD_DATAHOME={q(job.settings.shared_data)}")
    lines += [f"export {k}={shell_word(v)}" for k, v in sorted(job.env.items())]
    if job.secret_env and not in_image:  # in an image the container reads the file (task_script)
        lines += ["# The secret variables: this node's 0600 file, deleted once read.",
                  *secretenv.source_lines(secret_word)]
    if job.path_prefix:
        lines.append(f'export PATH={q(job.path_prefix)}:"$PATH"')
    return lines


def task_script(job: DeployJob) -> str:
    """One node's part (tasks kind): its place, the environment, its launcher form, the script."""
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        "# One node of a pytest-madengine SLURM job (the `slurm` key).",
        "set -u",
        "NODE_RANK=$SLURM_NODEID",
    ]
    if job.nodes > 1:
        lines += [
            "NNODES=$SLURM_NNODES",
            "# A node's address: what its name resolves to, else the address slurmctld knows (NodeAddr).",
            "mad_addr() {",
            "  local a",
            "  a=$(getent hosts \"$1\" | awk '{print $1; exit}')",
            "  [ -n \"$a\" ] || a=$(scontrol show node \"$1\" -o 2>/dev/null | sed -n 's/.*NodeAddr=\\([^ ]*\\).*/\\1/p')",
            "  echo \"${a:-$1}\"",
            "}",
            'mapfile -t MAD_NODE_NAMES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
            f'if [ "${{#MAD_NODE_NAMES[@]}}" -ne {job.nodes} ]; then',
            f'  echo "pytest-madengine: expected {job.nodes} nodes, SLURM gave $SLURM_JOB_NODELIST" >&2; exit 2',
            "fi",
            'for i in "${!MAD_NODE_NAMES[@]}"; do declare -x "MAD_HOST_$i=$(mad_addr "${MAD_NODE_NAMES[$i]}")"; done',
            "MASTER_ADDR=$MAD_HOST_0",
            "export NODE_RANK NNODES MASTER_ADDR",
        ]
        if not job.settings.network_interface:
            lines += [
                "# No slurm.network_interface: this node's ib* link, else its default route (madengine's rule).",
                "MAD_IFACE=$(ls /sys/class/net 2>/dev/null | grep -m1 '^ib')",
                "[ -n \"$MAD_IFACE\" ] || MAD_IFACE=$(awk '$2 == \"00000000\" {print $1; exit}' /proc/net/route 2>/dev/null)",
                'if [ -n "$MAD_IFACE" ]; then',
                '  export NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-$MAD_IFACE}" GLOO_SOCKET_IFNAME="${GLOO_SOCKET_IFNAME:-$MAD_IFACE}"',
                "fi",
            ]
    lines += _common_env(job, job.secret_word(), in_image=job.image is not None)
    workdir = q(str(job.node_dir)) + '/node"$NODE_RANK"'
    lines.append(f"cd {workdir} || {{ echo \"pytest-madengine: no run folder $PWD/node$NODE_RANK\" >&2; exit 2; }}")
    lines.append(f"# The launcher's form for each node ({job.launcher}); user variables above win over it.")
    in_image = job.image is not None
    setup = any(form.setup for form in job.ranks)
    if setup:
        lines.append("# The launcher's setup runs " + ("in the container" if in_image else "in the task's own process group")
                     + ", before the script.")
        lines.append("MAD_TASK_SETUP=")
    lines.append('case "$NODE_RANK" in')
    for rank, form in enumerate(job.ranks):
        body = [f"export {k}={shell_word(v)}" for k, v in sorted(form.env.items())
                if k not in job.env and k not in job.secret_env]
        for name, text in sorted(form.files.items()):
            body.append(f"printf '%s' {shell_word(text)} > {q(name)}")
        steps = [" ".join(shell_word(a) for a in step) + " || exit $?" for step in form.setup]
        if steps:
            body.append("MAD_TASK_SETUP=" + q("".join(f"{step}; " for step in steps)))
        lines.append(f"  {rank})")
        lines += [f"    {b}" for b in body]
        lines.append("    ;;")
    lines += ['  *) echo "pytest-madengine: no launcher form for node rank $NODE_RANK" >&2; exit 2 ;;', "esac"]
    argv = " ".join(q(a) for a in job.argv)
    if setup:
        argv = "bash -c \"$MAD_TASK_SETUP\"'exec \"$@\"' mad-task " + argv
    if job.image is None and setup:
        # What the setup starts (Ray's daemons) leaves its parent and would outlive the task
        # where SLURM tracks processes by parentage (proctrack/linuxproc): the setup and the
        # script run in a session of their own, and the whole group ends with the task.
        lines += [
            "setsid " + argv + " &",
            "MAD_GROUP=$!",
            "# Ray's gcs_server outlives a SIGTERM for a long while: 5 s of grace, then SIGKILL.",
            "mad_end_group() {",
            "  kill -TERM -- -\"$MAD_GROUP\" 2>/dev/null || return 0",
            "  for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 -- -\"$MAD_GROUP\" 2>/dev/null || return 0; sleep 0.5; done",
            "  kill -KILL -- -\"$MAD_GROUP\" 2>/dev/null",
            "  return 0",
            "}",
            "trap 'mad_end_group; exit 143' TERM INT",
            'wait "$MAD_GROUP"; MAD_RC=$?',
            "mad_end_group",
            'exit "$MAD_RC"',
        ]
        return "\n".join(lines) + "\n"
    if job.image is None:
        lines.append("exec " + argv)
        return "\n".join(lines) + "\n"
    if job.secret_env:
        # Not -e: the container's config would show the values. The file moves into the run
        # folder, where the container's first command sources and deletes it.
        lines.append(f"mv -f {job.secret_word()} {workdir}/{secretenv.ENV_FILE} || exit {secretenv.MISSING_EXIT}")
        argv = " ".join(q(a) for a in secretenv.loader()) + " " + argv
    lines += container(job).lines(workdir, argv)
    return "\n".join(lines) + "\n"


# What the task script sets itself: passed into the container with the job's and the launcher's.
# SLURM's own (where the task is) too: a script in the image sees what one on the host sees.
TASK_VARS = ("NODE_RANK", "NNODES", "MASTER_ADDR", "MAD_RUNTIME_NGPUS", "MAD_DEPLOYMENT_TYPE", "MAD_SLURM_JOB_ID",
             "MAD_IN_SLURM_JOB", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "MAD_DATAHOME", "HIP_VISIBLE_DEVICES",
             "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NNODES",
             "SLURM_NODEID", "SLURM_PROCID", "SLURMD_NODENAME", "SLURM_JOB_PARTITION")


def container(job: DeployJob) -> ContainerTask:
    """Each node's container (tasks kind, an image given): every variable the task script exports
    (the job's, the launcher's of every rank, the node's own, the host addresses) by name."""
    assert job.image is not None
    names = {*job.env, *TASK_VARS, *(k for form in job.ranks for k in form.env)}
    if job.nodes > 1:
        names |= {f"MAD_HOST_{k}" for k in range(job.nodes)}
    names -= set(job.secret_env)  # from the file, inside (secretenv.loader)
    mounts = list(job.data_mounts)
    if job.settings.shared_data:  # MAD_DATAHOME: the folder every node sees, at its path
        mounts.append((job.settings.shared_data, False))
    return ContainerTask(job.image, job.workspace, tuple(sorted(names)), tuple(mounts), job.gpus_per_node,
                         job.gpu_vendor)
