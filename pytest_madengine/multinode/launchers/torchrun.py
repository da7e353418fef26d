"""The torchrun command a model script expands as ``$MAD_MULTI_NODE_RUNNER``.

``launch``/``validate``: madengine 2.x's ``distributed.launcher: torchrun``.
``single_node``/``multi_node``: madengine 1.x's ``multi_node_args`` forms (settings.py).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pytest_madengine.multinode.launchers import base
from pytest_madengine.multinode.launchers.base import Launch, Topology

if TYPE_CHECKING:
    from pytest_madengine.multinode.settings import MultiNode

NAME = "torchrun"


def validate(settings: Mapping[str, Any], topo: Topology) -> None:
    base.check(settings, topo)


def launch(settings: Mapping[str, Any], topo: Topology, model_name: str) -> Launch:
    """``torchrun --standalone --nproc_per_node=P`` on one node; else ``torchrun --nnodes=N
    --nproc_per_node=P --node_rank=R --master_addr=A --master_port=PORT`` on every node."""
    validate(settings, topo)
    runner = base.torchrun_runner(topo)
    return Launch(runner=runner, env=base.env(NAME, runner, topo, settings))


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
