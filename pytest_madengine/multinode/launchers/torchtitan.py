"""``distributed.launcher: torchtitan``: the torchrun runner plus TorchTitan's parallel sizes
``TORCHTITAN_TENSOR_PARALLEL_SIZE=P``, ``TORCHTITAN_PIPELINE_PARALLEL_SIZE=N``,
``TORCHTITAN_FSDP_ENABLED`` (1 over several nodes, 0 on one) and
``TORCHTITAN_CONTEXT_PARALLEL_SIZE=1`` (madengine 2.x's SLURM and K8s values; locally madengine
sets no variables, we set them on every backend).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_madengine.multinode.launchers import base
from pytest_madengine.multinode.launchers.base import Launch, Topology

NAME = "torchtitan"


def validate(settings: Mapping[str, Any], topo: Topology) -> None:
    base.check(settings, topo)


def launch(settings: Mapping[str, Any], topo: Topology, model_name: str) -> Launch:
    validate(settings, topo)
    runner = base.torchrun_runner(topo)
    env = base.env(NAME, runner, topo, settings)
    env.update({
        "TORCHTITAN_TENSOR_PARALLEL_SIZE": str(topo.nproc_per_node),
        "TORCHTITAN_PIPELINE_PARALLEL_SIZE": str(topo.nnodes),
        "TORCHTITAN_FSDP_ENABLED": "1" if topo.multi_node else "0",
        "TORCHTITAN_CONTEXT_PARALLEL_SIZE": "1",
    })
    return Launch(runner=runner, env=env)
