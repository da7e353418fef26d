"""The mpirun command a model script expands as ``$MAD_MULTI_NODE_RUNNER``.

mpirun is run on node 0 only: it starts the ranks of the other nodes itself (over ssh, or
a launcher agent such as SLURM's), so those nodes need the same paths, the same Open MPI
and passwordless ssh from node 0 (see README, "Multi-node").
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_madengine.multinode.settings import MultiNode

# Open MPI refuses to start as root without these; model containers run as root.
ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


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
