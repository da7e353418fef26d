"""``distributed.launcher: vllm``: no runner (the script starts vLLM itself).

One node: ``VLLM_TENSOR_PARALLEL_SIZE=P``, ``VLLM_PIPELINE_PARALLEL_SIZE=1``,
``VLLM_DISTRIBUTED_BACKEND=auto`` (madengine 2.x).

Several nodes: one vLLM instance over a Ray cluster of every node, tensor parallel inside a
node and pipeline parallel across nodes, as madengine's docs describe:
``VLLM_TENSOR_PARALLEL_SIZE=P``, ``VLLM_PIPELINE_PARALLEL_SIZE=N``,
``VLLM_DISTRIBUTED_BACKEND=ray``, ``RAY_ADDRESS=A:6379``, ``VLLM_HOST_IP`` (this node's
address, when the hosts are known as IP addresses). Setup before the script: node 0
``ray start --head --port=6379 --num-gpus=P``, the others ``ray start --address=A:6379
--num-gpus=P`` (node 0's setup must be done first), each with ``--node-ip-address`` when its
address is known as an IP. The script serves on node 0; on the other
nodes it has to keep the node in the cluster until node 0 is done (``NODE_RANK`` tells which).

madengine's SLURM code instead sets PP=1 and backend ``none`` on every node: N independent
replicas, contrary to its docs. We do not ``ray stop --force`` first as its K8s script does: on
a bare host that kills every Ray process of the user; a stale head fails ``ray start`` loudly.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from pytest_madengine.multinode.launchers import base
from pytest_madengine.multinode.launchers.base import Launch, Topology

NAME = "vllm"
RAY_PORT = 6379  # madengine's (K8s) Ray head port, Ray's default


def validate(settings: Mapping[str, Any], topo: Topology) -> None:
    base.check(settings, topo)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def ray_setup(topo: Topology) -> tuple[tuple[str, ...], ...]:
    """This node's Ray commands: the head on node 0, a worker joining it elsewhere."""
    gpus = f"--num-gpus={topo.nproc_per_node}"
    # Ray guesses a node's address from the default route; on hosts with several interfaces
    # (or none routed) that guess is wrong, so a known address is given.
    own = (f"--node-ip-address={topo.host}",) if topo.host and is_ip(topo.host) else ()
    if topo.node_rank == 0:
        return (("ray", "start", "--head", f"--port={RAY_PORT}", gpus, *own),)
    return (("ray", "start", f"--address={topo.master_addr}:{RAY_PORT}", gpus, *own),)


def launch(settings: Mapping[str, Any], topo: Topology, model_name: str) -> Launch:
    validate(settings, topo)
    env = base.env(NAME, "", topo, settings)
    env["VLLM_TENSOR_PARALLEL_SIZE"] = str(topo.nproc_per_node)
    if not topo.multi_node:
        env.update({"VLLM_PIPELINE_PARALLEL_SIZE": "1", "VLLM_DISTRIBUTED_BACKEND": "auto"})
        return Launch(runner="", env=env)
    env.update({
        "VLLM_PIPELINE_PARALLEL_SIZE": str(topo.nnodes),
        "VLLM_DISTRIBUTED_BACKEND": "ray",
        "RAY_ADDRESS": f"{topo.master_addr}:{RAY_PORT}",
    })
    if topo.host and is_ip(topo.host):
        env["VLLM_HOST_IP"] = topo.host
    setup = ray_setup(topo)
    notes = (
        f"vllm: one instance over Ray, TP {topo.nproc_per_node} x PP {topo.nnodes} (madengine's SLURM code "
        "runs one TP-only replica per node, PP 1, backend none, contrary to its docs)",
        f"vllm: Ray head on node 0 ({topo.master_addr}:{RAY_PORT}); this node runs first: "
        + "; ".join(" ".join(argv) for argv in setup),
    )
    return Launch(runner="", env=env, notes=notes, setup=setup)
