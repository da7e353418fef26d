"""``distributed.launcher: megatron`` and ``megatron-lm``: the torchrun runner plus
Megatron-Core's parallel sizes ``TENSOR_MODEL_PARALLEL_SIZE=P``,
``PIPELINE_MODEL_PARALLEL_SIZE=N``, ``CONTEXT_PARALLEL_SIZE=1`` (tensor parallel inside a
node, pipeline parallel across nodes).

madengine 2.x: locally both names are plain torchrun (standalone); on SLURM the path is dead
(``megatron`` is rewritten to ``docker``, ``megatron-lm`` is not dispatched) so every node
runs an independent single-node job. We do what its SLURM code intends, on every backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_madengine.multinode.launchers import base
from pytest_madengine.multinode.launchers.base import Launch, Topology

NAMES = ("megatron", "megatron-lm")


def validate(settings: Mapping[str, Any], topo: Topology) -> None:
    base.check(settings, topo)


def launch(settings: Mapping[str, Any], topo: Topology, model_name: str) -> Launch:
    validate(settings, topo)
    asked = base.launcher_of(settings)
    name = asked if asked in NAMES else NAMES[0]
    runner = base.torchrun_runner(topo)
    env = base.env(name, runner, topo, settings)
    env.update({
        "TENSOR_MODEL_PARALLEL_SIZE": str(topo.nproc_per_node),
        "PIPELINE_MODEL_PARALLEL_SIZE": str(topo.nnodes),
        "CONTEXT_PARALLEL_SIZE": "1",
    })
    note = (f"{name}: torchrun with Megatron parallel sizes (madengine's SLURM path for {name} is dead: "
            "it runs one independent single-node job per node)")
    return Launch(runner=runner, env=env, notes=(note,))
