"""A SLURM node's task in a container: the one implementation behind every job that runs in an
image (``slurm_args`` with an image, the ``slurm`` key with an image source, slurm_multi's
pull). Pure: data in, script lines out.

On each node:

* the image is pulled first: a manifest's by its digest (Docker checks the content against it,
  then tags it with the pushed name), a registry name (``host:5000/x:t``, ``rocm/x``) by name,
  a bare local name not at all (taken as present on the nodes). A failed pull ends that node's
  task with ``pytest-madengine: node <k> (<host>): cannot pull <image> ...`` on its output;
  ``srun --kill-on-bad-exit`` then stops the other nodes, and the executor makes that line the
  item's reason (``pull_failure``);
* ``docker run`` under a name derived from the job, ``mad-slurm-<job id>-node<rank>``, with
  every variable the task exported passed by name (``-e NAME``: no allow-list, and no value in
  ``ps``), the host network (the rendezvous), the checkout, the node's run folder and every
  served data folder at their host paths;
* the container is removed on every path: the task's EXIT trap (the run ended, or scancel /
  the time limit sent SIGTERM), and a cleanup step the batch script runs on every node after
  the tasks (a task killed outright, as ``--kill-on-bad-exit`` may, cannot remove its own).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_madengine.executors.docker.manifest import NodePull

PREFIX = "mad-slurm"
# The container of node k of job j: known before the job runs, so anyone can find (and remove) it.
NAME = f'{PREFIX}-"$SLURM_JOB_ID"-node"$SLURM_NODEID"'
_WHO = '"pytest-madengine: node $SLURM_NODEID (${SLURMD_NODENAME:-$(hostname)}): "'
_PULL_FAILED = re.compile(r"pytest-madengine: node (\d+) \(([^)]*)\): (cannot pull .*)")


def container_name(job_id: str, rank: int) -> str:
    return f"{PREFIX}-{job_id}-node{rank}"


def is_registry_image(image: str) -> bool:
    """A name with a repository path (``rocm/x:tag``, ``host:5000/x``) is pulled; a bare local
    name (``mad-base:bookworm``) is taken as built on the nodes."""
    return "/" in image


@dataclass(frozen=True)
class NodeImage:
    """The image every node's task runs in, and how a node gets it."""

    image: str  # what docker run starts (a manifest's: the pushed name, tagged after the pull)
    pull: NodePull | None = None  # a manifest's image: pulled by its digest
    source: str = ""  # where it comes from, for the plan's notes

    @property
    def by_name(self) -> bool:
        return self.pull is None and is_registry_image(self.image)

    def pull_lines(self) -> list[str]:
        """What a node runs before its container: nothing for a local name."""
        if self.pull is None and not self.by_name:
            return []
        lines = [f'echo "pytest-madengine: node $SLURM_NODEID pulls "{shlex.quote(self.image)}']
        if self.pull is not None:
            return lines + self.pull.script(who=_WHO).splitlines()
        why = shlex.quote(f"cannot pull {self.image}")
        return [*lines, f"docker pull {shlex.quote(self.image)} || {{ echo {_WHO}{why} >&2; exit 1; }}"]

    def note(self) -> str:
        how = (f"pulled by digest {self.pull.pinned}" if self.pull is not None
               else "pulled by name" if self.by_name else "a local name, not pulled")
        return f"every node runs the task in the image {self.image} ({self.source}; {how})"


@dataclass(frozen=True)
class ContainerTask:
    """One node's container: the image, what it sees, what it gets."""

    image: NodeImage
    workspace: Path  # the checkout, at its host path
    names: tuple[str, ...]  # variables passed by name (the task exported them)
    mounts: tuple[tuple[str, bool], ...] = ()  # (host folder, read-only): served data, same path inside
    gpus_per_node: int = 0
    gpu_vendor: str = "NONE"

    def docker_argv(self) -> list[str]:
        argv = ["docker", "run", "--rm", "--init", "--network", "host", "--ipc", "host",
                "-v", f"{self.workspace}:{self.workspace}"]
        for host, readonly in dict.fromkeys(self.mounts):
            argv += ["-v", f"{host}:{host}" + (":ro" if readonly else "")]
        if self.gpus_per_node > 0 and self.gpu_vendor == "AMD":
            argv += ["--device", "/dev/kfd", "--device", "/dev/dri", "--group-add", "video"]
        elif self.gpus_per_node > 0 and self.gpu_vendor == "NVIDIA":
            argv += ["--gpus", "all"]
        return argv

    def lines(self, workdir: str, command: str) -> list[str]:
        """Pull, then run ``command`` (shell words) in ``workdir`` (a shell word: the node's run
        folder, mounted at its host path) in the container; the container goes with the task."""
        q = shlex.quote
        env = " ".join(f"-e {n}" for n in sorted(set(self.names)))
        return [
            *self.image.pull_lines(),
            f"NAME={NAME}",
            "# scancel and the time limit send SIGTERM first: the container goes with this script.",
            "trap 'docker rm -f \"$NAME\" >/dev/null 2>&1' EXIT",
            "trap 'exit 143' TERM INT",
            " ".join(q(a) for a in self.docker_argv())
            + f' -v {workdir}:{workdir} -w {workdir} --name "$NAME" {env} {q(self.image.image)} {command} &',
            "wait $!",
        ]


def cleanup_step(output: str = "/dev/null") -> list[str]:
    """Batch-script lines after the tasks' step: every node removes its container (a task that
    was killed outright left it), keeping the tasks' exit status for the end marker."""
    script = f"docker rm -f {NAME} >/dev/null 2>&1; true"
    return [
        "rc=$?",
        "# A task killed outright (--kill-on-bad-exit) cannot remove its container: every node does it here.",
        f"srun --ntasks-per-node=1 --output={shlex.quote(output)} bash -c {shlex.quote(script)}",
        "exit $rc",
    ]


def pull_failure(outputs: Sequence[Iterable[str]]) -> str:
    """The first node's pull failure in the nodes' outputs (``outputs[k]``: node k's lines), as a
    reason: ``node 1 (n2): cannot pull ...``; "" when none failed to pull."""
    for lines in outputs:
        for line in lines:
            m = _PULL_FAILED.search(line)
            if m:
                return f"node {m.group(1)} ({m.group(2)}): {m.group(3).strip()}"
    return ""
