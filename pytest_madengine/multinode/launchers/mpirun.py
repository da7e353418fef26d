"""The mpirun command a model script expands as ``$MAD_MULTI_NODE_RUNNER``.

mpirun is run on node 0 only: it starts the ranks of the other nodes itself (over ssh, or
a launcher agent such as SLURM's), so those nodes need the same paths, the same Open MPI
and passwordless ssh from node 0 (see README, "Multi-node").
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pytest_madengine.multinode.launchers import base
from pytest_madengine.multinode.launchers.base import Launch, LauncherError, Topology

if TYPE_CHECKING:
    from pytest_madengine.multinode.settings import MultiNode

NAME = "mpirun"

# Open MPI refuses to start as root without these; model containers run as root.
ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def validate(settings: Mapping[str, Any], topo: Topology) -> None:
    """mpirun starts the ranks of every node from node 0, so it needs the hosts and runs on
    node 0 only."""
    base.check(settings, topo)
    if topo.multi_node and not topo.hosts:
        raise LauncherError(f"{base.key('launcher')} mpirun with {base.key('nnodes')} {topo.nnodes} needs the "
                            "nodes' host names (mpirun starts every node's ranks from node 0)")
    if topo.node_rank != 0:
        raise LauncherError(f"{base.key('launcher')} mpirun starts every rank from node 0 (over ssh); "
                            f"run it on node 0 only, not with node_rank {topo.node_rank}")


def launch(settings: Mapping[str, Any], topo: Topology, model_name: str) -> Launch:
    """madengine 1.x's form: ``mpirun -np <N*P> --host <h1:P,h2:P | localhost:P>``, with
    Open MPI's run-as-root variables. Not a madengine 2.x launcher (2.x has no mpirun)."""
    validate(settings, topo)
    hosts = ",".join(f"{h}:{topo.nproc_per_node}" for h in topo.hosts) or f"localhost:{topo.nproc_per_node}"
    runner = base.join(["mpirun", "-np", str(topo.world_size), "--host", hosts])
    env = base.env(NAME, runner, topo, settings)
    env.update(ROOT_ENV)
    note = "mpirun: madengine 1.x's runner (multi_node_args RUNNER mpirun); madengine 2.x has no mpirun launcher"
    return Launch(runner=runner, env=env, notes=(note,))


def single_node(nproc: int) -> str:
    return shlex.join(["mpirun", "-np", str(max(1, nproc))])


def multi_node(mn: MultiNode, nproc: int) -> str:
    """``mpirun -np <NNODES * P>`` with ``--hostfile F`` or ``--host h1:P,h2:P`` (slots
    default to P); one node without hosts is the single-node form. Set interface variables
    are forwarded to remote ranks with ``-x``."""
    per_node = mn.nproc(nproc)
    argv = ["mpirun", "-np", str(mn.nnodes * per_node)]
    if mn.hostfile:
        argv += ["--hostfile", mn.hostfile]
    elif mn.hosts:
        argv += ["--host", ",".join(h.spec(per_node) for h in mn.hosts)]
    for name in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
        if name in mn.env():
            argv += ["-x", name]
    return shlex.join(argv)
