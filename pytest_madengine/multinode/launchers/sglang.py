"""``distributed.launcher: sglang``: no runner (the script starts SGLang itself);
``SGLANG_TENSOR_PARALLEL_SIZE=P`` and ``SGLANG_PIPELINE_PARALLEL_SIZE=1`` (madengine 2.x).

Several nodes, also (madengine's K8s values, which its SLURM path leaves out):
``NCCL_INIT_ADDR=A:PORT`` (SGLang's ``--dist-init-addr``), ``SGLANG_NNODES=N``,
``SGLANG_NODE_RANK=R`` and ``SGLANG_HOST_IP`` (this node's host, when known). The TP size stays
per node, as in madengine: a script serving one model across the nodes passes
``--tp $((SGLANG_TENSOR_PARALLEL_SIZE * SGLANG_NNODES)) --nnodes $SGLANG_NNODES --node-rank
$SGLANG_NODE_RANK --dist-init-addr $NCCL_INIT_ADDR``; one replica per node ignores them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_madengine.multinode.launchers import base
from pytest_madengine.multinode.launchers.base import Launch, Topology

NAME = "sglang"


def validate(settings: Mapping[str, Any], topo: Topology) -> None:
    base.check(settings, topo)


def launch(settings: Mapping[str, Any], topo: Topology, model_name: str) -> Launch:
    validate(settings, topo)
    env = base.env(NAME, "", topo, settings)
    env.update({"SGLANG_TENSOR_PARALLEL_SIZE": str(topo.nproc_per_node), "SGLANG_PIPELINE_PARALLEL_SIZE": "1"})
    if topo.multi_node:
        env.update({
            "NCCL_INIT_ADDR": f"{topo.master_addr}:{topo.master_port}",
            "SGLANG_NNODES": str(topo.nnodes),
            "SGLANG_NODE_RANK": str(topo.node_rank),
        })
        if topo.host:
            env["SGLANG_HOST_IP"] = topo.host
    return Launch(runner="", env=env)
