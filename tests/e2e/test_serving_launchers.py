"""madengine 2.x's serving launchers run for real on the local backend, each node a pytest
process in its own network namespace: ``vllm`` (the launcher's setup starts a real Ray
cluster, head on node 0 and a worker on every other node; the stand-in workload checks every
node joined and ran a task), ``sglang`` (nodes meet at ``NCCL_INIT_ADDR`` as SGLang's
``--dist-init-addr`` does) and ``sglang-disagg`` on 3 and 4 nodes (each node sees its role
and the roles add up to the split)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from .conftest import ModelRepo
from .multinode_helpers import NetnsGroup, Nodes, need_torch, node_context, show, unavailable

pytestmark = pytest.mark.multinode

VLLM_RUN = """\
#!/bin/bash
set -euo pipefail
echo "launcher=$MAD_LAUNCHER backend=$VLLM_DISTRIBUTED_BACKEND tp=$VLLM_TENSOR_PARALLEL_SIZE pp=$VLLM_PIPELINE_PARALLEL_SIZE ray=$RAY_ADDRESS host_ip=${VLLM_HOST_IP:-} rank=$NODE_RANK"
python3 ray_check.py
"""

RAY_CHECK = """\
import os
import sys
import time

import ray
from ray.experimental import internal_kv as kv
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

nnodes, rank = int(os.environ["NNODES"]), int(os.environ["NODE_RANK"])
ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR")
deadline = time.monotonic() + 150


def wait_for(what, ok):
    while not ok():
        if time.monotonic() > deadline:
            print(f"timed out waiting for {what}", flush=True)
            sys.exit(4)
        time.sleep(0.5)


@ray.remote(num_cpus=0)
def where():
    return ray.util.get_node_ip_address()


if rank == 0:
    alive = lambda: [n for n in ray.nodes() if n["Alive"]]  # noqa: E731
    wait_for(f"{nnodes} Ray nodes", lambda: len(alive()) >= nnodes)
    nodes = alive()
    print("ray nodes: " + ",".join(sorted(n["NodeManagerAddress"] for n in nodes)), flush=True)
    ips = ray.get([where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
                   for n in nodes])
    print("tasks ran on: " + ",".join(sorted(ips)), flush=True)
    kv._internal_kv_put(b"mad_done", b"1")
    # the workers leave the cluster only once node 0 is done with it
    wait_for("the workers", lambda: all(kv._internal_kv_get(f"mad_ack_{r}".encode()) for r in range(1, nnodes)))
    print(f"performance: {len(set(ips))} ray_nodes", flush=True)
else:
    wait_for("node 0", lambda: kv._internal_kv_get(b"mad_done") is not None)
    kv._internal_kv_put(f"mad_ack_{rank}".encode(), b"1")
    print(f"node {rank} stayed in the Ray cluster until node 0 was done", flush=True)
"""

# SGLang's own multi-node form: every node joins one process group at --dist-init-addr.
SGLANG_RUN = """\
#!/bin/bash
set -euo pipefail
echo "launcher=$MAD_LAUNCHER tp=$SGLANG_TENSOR_PARALLEL_SIZE nnodes=$SGLANG_NNODES node_rank=$SGLANG_NODE_RANK init=$NCCL_INIT_ADDR host=${SGLANG_HOST_IP:-}"
python3 meet.py "tcp://$NCCL_INIT_ADDR" "$SGLANG_NODE_RANK" "$SGLANG_NNODES" sglang
"""

DISAGG_RUN = """\
#!/bin/bash
set -euo pipefail
echo "role=$SGLANG_DISAGG_ROLE prefill=$SGLANG_DISAGG_PREFILL_NODES decode=$SGLANG_DISAGG_DECODE_NODES total=$SGLANG_DISAGG_TOTAL_NODES ips=${SGLANG_NODE_IPS:-}"
python3 meet.py "tcp://$MASTER_ADDR:$MASTER_PORT" "$SGLANG_NODE_RANK" "$SGLANG_DISAGG_TOTAL_NODES" "$SGLANG_DISAGG_ROLE"
"""

MEET = """\
import os
import sys

import torch.distributed as dist

init, rank, world, role = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
roles = [None] * world
dist.all_gather_object(roles, role)
print(f"node {rank} sees roles {','.join(roles)}", flush=True)
dist.barrier()
if rank == 0:
    print(f"performance: {world} nodes_met", flush=True)
sys.stdout.flush()
os._exit(0)  # no gloo teardown at exit (see tests/e2e/multinode_helpers.py)
"""


def need_ray() -> None:
    bindir = str(sys.executable).rsplit("/", 1)[0]
    if shutil.which("ray", path=bindir) is None and shutil.which("ray") is None:
        unavailable("Ray is not installed (pip install ray; it is in the test extra)")


def run_nodes(repo: ModelRepo, group: NetnsGroup, tags: str, launcher: dict[str, object],
              timeout: float = 300) -> list:
    nodes = Nodes(repo.path, tags=tags)
    n = len(group.ns)
    hosts = ",".join(group.addr)
    for rank in reversed(range(n)):  # the workers first: they retry until node 0 listens
        ctx = node_context(rank, nnodes=n, MASTER_ADDR=group.addr[0], MASTER_PORT=29500,
                           GLOO_SOCKET_IFNAME=group.veth[rank], HOST_LIST=hosts, rendezvous_timeout=120)
        ctx["distributed"] = {**launcher, "nproc_per_node": 1}
        nodes.start(rank, ctx, netns=group.ns[rank])
        time.sleep(0.5)
    try:
        done = nodes.wait(timeout=timeout)
    finally:
        nodes.kill()
    assert all(node.rc == 0 for node in done), show(done)
    return done


def ray_processes() -> str:
    out = subprocess.run(["pgrep", "-af", "ray/core/src/ray|ray/_private/workers|ray::"], capture_output=True,
                         text=True, check=False).stdout
    return out.strip()


def test_vllm_starts_a_ray_cluster_across_two_nodes(repo: ModelRepo, netns_group: Callable[[int], NetnsGroup]) -> None:
    need_ray()
    if ray_processes():
        pytest.skip("a Ray cluster of someone else's runs on this host; its processes would confuse the check")
    group = netns_group(2)
    repo.script("scripts/vllm_check/ray_check.py", RAY_CHECK)
    repo.model("vl", VLLM_RUN, script="scripts/vllm_check/run.sh", timeout=240)
    n0, n1 = run_nodes(repo, group, "vl", {"launcher": "vllm"})
    head, worker = n0.log("vl"), n1.log("vl")
    assert "launcher=vllm backend=ray tp=1 pp=2 ray=10.201.0.1:6379 host_ip=10.201.0.1 rank=0" in head, head
    assert "ray start --head --port=6379 --num-gpus=1 --node-ip-address=10.201.0.1" in head
    assert "ray start --address=10.201.0.1:6379 --num-gpus=1 --node-ip-address=10.201.0.2" in worker, worker
    assert "ray nodes: 10.201.0.1,10.201.0.2" in head and "tasks ran on: 10.201.0.1,10.201.0.2" in head, head
    assert "stayed in the Ray cluster until node 0 was done" in worker
    [row] = n0.perf()
    assert (row["status"], row["performance"], row["metric"]) == ("SUCCESS", "2", "ray_nodes"), row
    # the Ray daemons were in each run's process group: gone with it
    deadline = time.monotonic() + 15
    while ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes(), ray_processes()


def test_sglang_nodes_meet_at_the_dist_init_address(repo: ModelRepo,
                                                   netns_group: Callable[[int], NetnsGroup]) -> None:
    need_torch()
    group = netns_group(2)
    repo.script("scripts/sglang_check/meet.py", MEET)
    repo.model("sg", SGLANG_RUN, script="scripts/sglang_check/run.sh", timeout=240)
    n0, n1 = run_nodes(repo, group, "sg", {"launcher": "sglang"})
    for node in (n0, n1):
        log = node.log("sg")
        assert (f"launcher=sglang tp=1 nnodes=2 node_rank={node.rank} init=10.201.0.1:29500 "
                f"host=10.201.0.{node.rank + 1}") in log, log
        assert "sees roles sglang,sglang" in log
    [row] = n0.perf()
    assert (row["status"], row["performance"]) == ("SUCCESS", "2"), row


@pytest.mark.parametrize(("nnodes", "split", "roles"), [
    (3, {}, "proxy,prefill,decode"),
    (4, {"prefill_nodes": 1}, "proxy,prefill,decode,decode"),
])
def test_sglang_disagg_each_node_sees_its_role(repo: ModelRepo, netns_group: Callable[[int], NetnsGroup],
                                               nnodes: int, split: dict[str, int], roles: str) -> None:
    need_torch()
    group = netns_group(nnodes)
    repo.script("scripts/disagg_check/meet.py", MEET)
    repo.model("dg", DISAGG_RUN, script="scripts/disagg_check/run.sh", timeout=240)
    launcher: dict[str, object] = {"launcher": "sglang-disagg", **({"sglang_disagg": split} if split else {})}
    done = run_nodes(repo, group, "dg", launcher)
    expected = roles.split(",")
    prefill, decode = expected.count("prefill"), expected.count("decode")
    for node in done:
        log = node.log("dg")
        assert (f"role={expected[node.rank]} prefill={prefill} decode={decode} total={nnodes} "
                f"ips={','.join(group.addr)}") in log, log
        assert f"sees roles {roles}" in log, log
    [row] = done[0].perf()
    assert (row["status"], row["performance"]) == ("SUCCESS", str(nnodes)), row
    for node in done[1:]:  # worker nodes pass on exit 0 without a number, reported by node 0
        assert [r["status"] for r in node.perf()] in ([], ["SUCCESS"]), node.perf()
