"""madengine 2.x ``distributed`` launchers, run for real on the local backend: torchrun,
megatron, torchtitan (torchrun plus their variables) and deepspeed (the real ``deepspeed``
launcher from PyPI starting ranks on CPU), one node with two ranks and two nodes in network
namespaces; a stand-in workload checks the variables and does a gloo all_reduce."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .conftest import ModelRepo
from .multinode_helpers import NetnsPair, Nodes, need_torch, node_context, show, unavailable

pytestmark = pytest.mark.multinode

RUN_SH = """\
#!/bin/bash
set -euo pipefail
echo "launcher=$MAD_LAUNCHER runner=$MAD_MULTI_NODE_RUNNER"
env | grep -E '^(TENSOR_MODEL_PARALLEL_SIZE|PIPELINE_MODEL_PARALLEL_SIZE|CONTEXT_PARALLEL_SIZE|TORCHTITAN_[A-Z_]*|NNODES|NODE_RANK|NPROC_PER_NODE|MASTER_ADDR|MASTER_PORT)=' | sort | sed 's/^/env: /' || true
test -z "${NEED_HOSTFILE:-}" || { echo "hostfile:"; cat hostfile; }
$MAD_MULTI_NODE_RUNNER check.py
"""

CHECK_PY = """\
import os
import sys

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
t = torch.tensor([rank + 1.0])
dist.all_reduce(t)
expected = world * (world + 1) / 2
print(f"rank {rank}/{world} local_rank {os.environ.get('LOCAL_RANK')} sum {t.item()} expected {expected}", flush=True)
if t.item() != expected:
    sys.exit(3)
dist.barrier()
if rank == 0:
    print(f"performance: {t.item():g} allreduce_sum", flush=True)
sys.stdout.flush()
os._exit(0)  # no gloo teardown at exit (see tests/e2e/multinode_helpers.py)
"""


def workload(repo: ModelRepo, name: str, **fields: object) -> None:
    repo.script("scripts/launch_check/check.py", CHECK_PY)
    repo.model(name, RUN_SH, script="scripts/launch_check/run.sh", timeout=240, **fields)


def need_deepspeed() -> None:
    import shutil

    if shutil.which("deepspeed") is None:
        unavailable("the deepspeed launcher is missing (pip install deepspeed)")


EXPECT = {
    "torchrun": ["runner=torchrun --standalone --nproc_per_node=2"],
    "megatron": ["launcher=megatron", "env: TENSOR_MODEL_PARALLEL_SIZE=2", "env: PIPELINE_MODEL_PARALLEL_SIZE=1",
                 "env: CONTEXT_PARALLEL_SIZE=1"],
    "torchtitan": ["env: TORCHTITAN_TENSOR_PARALLEL_SIZE=2", "env: TORCHTITAN_PIPELINE_PARALLEL_SIZE=1",
                   "env: TORCHTITAN_FSDP_ENABLED=0"],
    "deepspeed": ["runner=deepspeed --num_gpus=2"],
}


@pytest.mark.parametrize("launcher", sorted(EXPECT))
def test_one_node_two_ranks(pytester: pytest.Pytester, repo: ModelRepo, launcher: str) -> None:
    need_torch()
    if launcher == "deepspeed":
        need_deepspeed()
    # the card names the launcher; the context adds the ranks per node (merged key by key)
    workload(repo, "lc", distributed={"launcher": launcher})
    ctx = {"distributed": {"nproc_per_node": 2}}
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-tags=lc", "--mad-executor=local",
                             f"--mad-context={json.dumps(ctx)}")
    log = (pytester.path / "mad_logs/lc.log").read_text()
    res.assert_outcomes(passed=1)
    assert "sum 3.0 expected 3.0" in log, log
    for line in EXPECT[launcher]:
        assert line in log, (line, log)


def test_an_unknown_launcher_fails_before_running(pytester: pytest.Pytester, repo: ModelRepo) -> None:
    workload(repo, "lc", distributed={"launcher": "torchrum"})
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-tags=lc", "--mad-executor=local")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*distributed.launcher*torchrum*did you mean*torchrun*"])
    assert not (pytester.path / "mad_work/lc").exists()


@pytest.mark.parametrize("launcher", ["torchrun", "megatron", "deepspeed"])
def test_two_nodes_in_network_namespaces(pytester: pytest.Pytester, repo: ModelRepo, netns_pair: NetnsPair,
                                         launcher: str) -> None:
    """Each node's pytest process runs the launcher's per-node form; ranks of both nodes meet
    (the all_reduce sum proves it). deepspeed runs from the hostfile it was given, without ssh."""
    need_torch()
    if launcher == "deepspeed":
        need_deepspeed()
    workload(repo, "lc2", env_vars={"NEED_HOSTFILE": "1" if launcher == "deepspeed" else ""})
    nodes = Nodes(pytester.path, tags="lc2")
    for rank in (1, 0):  # node 1 first: it retries until node 0 listens
        ctx = node_context(rank, MASTER_ADDR="10.200.0.1", MASTER_PORT=29500, GLOO_SOCKET_IFNAME=netns_pair.veth[rank],
                           HOST_LIST="10.200.0.1,10.200.0.2", rendezvous_timeout=120)
        ctx["distributed"] = {"launcher": launcher, "nproc_per_node": 1}
        nodes.start(rank, ctx, netns=netns_pair.ns[rank])
        time.sleep(1.0)
    n0, n1 = nodes.wait(timeout=400)
    assert (n0.rc, n1.rc) == (0, 0), show([n0, n1])
    for node in (n0, n1):
        log = node.log("lc2")
        assert "sum 3.0 expected 3.0" in log, log
        assert f"env: NODE_RANK={node.rank}" in log and "env: NNODES=2" in log
    if launcher == "megatron":
        assert "env: PIPELINE_MODEL_PARALLEL_SIZE=2" in n0.log("lc2")
    if launcher == "deepspeed":
        assert "--no_ssh --node_rank=1" in n1.log("lc2") or "--node_rank=1" in n1.log("lc2")
        assert "10.200.0.1 slots=1" in n0.log("lc2")
    [row0] = n0.perf()
    assert row0["status"] == "SUCCESS" and row0["performance"] == "3" and row0["launcher"]
    assert Path(n0.dir).exists()
