"""``distributed.launcher: deepspeed``.

One node: ``deepspeed --num_gpus=P`` (madengine 2.x).

Several nodes: every node runs its own launcher for its own ranks, with DeepSpeed's no-ssh
mode: ``deepspeed --hostfile=hostfile --no_ssh --node_rank=R --num_nodes=N --num_gpus=P
--master_addr=A --master_port=PORT``. The hostfile (``<host> slots=P`` per node, in node
rank order) is written into the run folder, the script's working directory.

Where we differ from madengine's SLURM path, and why:

* madengine writes ``/tmp/deepspeed_hostfile_<job>.txt`` on the host, which the container
  never sees, so DeepSpeed falls back to "local resources only" and ``--num_nodes`` > 1
  fails. We write the hostfile into the run folder, which the container mounts.
* madengine's runner has no ``--no_ssh``: DeepSpeed would start every node's ranks from node 0
  over pdsh/ssh, while madengine also runs the script on every node, so ranks would start
  twice (or fail without pdsh in the image). With ``--no_ssh --node_rank=R`` each node starts
  only its own ranks (DeepSpeed's launcher picks the hostfile line by ``--node_rank``; the
  names are labels only, so placeholders ``node<i>`` serve when the hosts are not known).
  This needs a DeepSpeed release with ``--no_ssh``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_madengine.multinode.launchers import base
from pytest_madengine.multinode.launchers.base import Launch, Topology

NAME = "deepspeed"
HOSTFILE = "hostfile"  # relative to the run folder (the script's working directory)


def validate(settings: Mapping[str, Any], topo: Topology) -> None:
    base.check(settings, topo)


def hostfile(topo: Topology) -> tuple[str, bool]:
    """(hostfile text, whether real host names were used). DeepSpeed refuses repeated names,
    so repeated (or unknown) hosts give placeholders."""
    names = list(topo.hosts)
    real = bool(names) and len(set(names)) == len(names)
    if not real:
        names = [f"node{i}" for i in range(topo.nnodes)]
    return "".join(f"{name} slots={topo.nproc_per_node}\n" for name in names), real


def launch(settings: Mapping[str, Any], topo: Topology, model_name: str) -> Launch:
    validate(settings, topo)
    if not topo.multi_node:
        runner = base.join(["deepspeed", f"--num_gpus={topo.nproc_per_node}"])
        return Launch(runner=runner, env=base.env(NAME, runner, topo, settings))
    text, real = hostfile(topo)
    runner = base.join([
        "deepspeed", f"--hostfile={HOSTFILE}", "--no_ssh", f"--node_rank={topo.node_rank}",
        f"--num_nodes={topo.nnodes}", f"--num_gpus={topo.nproc_per_node}",
        f"--master_addr={topo.master_addr}", f"--master_port={topo.master_port}",
    ])
    notes = [
        f"deepspeed: {HOSTFILE} is written into the run folder (madengine writes it on the host, "
        "where the container cannot see it); run deepspeed from the run folder",
        "deepspeed: --no_ssh --node_rank: every node starts its own ranks (madengine's runner would "
        "start all ranks from node 0 over pdsh/ssh, as well as on every node)",
    ]
    if not real:
        notes.append(f"deepspeed: hosts not known (or repeated): {HOSTFILE} names node0..node{topo.nnodes - 1} "
                     "(labels only with --no_ssh)")
    return Launch(runner=runner, env=base.env(NAME, runner, topo, settings),
                  files={HOSTFILE: text}, notes=tuple(notes))
