"""The torchrun command a model script expands as ``$MAD_MULTI_NODE_RUNNER``."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_madengine.multinode.settings import MultiNode


def single_node(nproc: int) -> str:
    """madengine 2.x's single-node runner."""
    return shlex.join(["torchrun", "--standalone", f"--nproc_per_node={max(1, nproc)}"])


def multi_node(mn: MultiNode, nproc: int) -> str:
    """madengine 1.x's ``multi_node_args`` runner: space-separated flags in its order, the
    multi-node form even for one node. ``nproc`` = GPUs allocated (1 without GPUs) unless
    ``multi_node_args`` sets the processes per node. The interface variables go into the
    environment, not in front of the command (a ``VAR=x`` word inside an expanded
    ``$MAD_MULTI_NODE_RUNNER`` would be run as a command)."""
    return shlex.join([
        "torchrun",
        "--nproc_per_node", str(mn.nproc(nproc)),
        "--nnodes", str(mn.nnodes),
        "--node_rank", str(mn.node_rank),
        "--master_addr", mn.master_addr,
        "--master_port", str(mn.master_port),
    ])
