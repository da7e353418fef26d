"""Multi-node runs end to end with the local executor: pytest processes as nodes (in their
own network namespaces for the torchrun test), the rendezvous barrier, per-rank values,
mpirun, the shared mirror folder.

A missing component (ip netns, torch, mpirun) skips a test, except under CI=true where it fails.
"""

from __future__ import annotations

import json
import time

import pytest

from .conftest import PERF_OK
from .multinode_helpers import (
    Nodes,
    copy_demo,
    free_port_pair,
    need_mpirun,
    need_torch,
    node_context,
    show,
)

LOCAL = ("--mad-executor=local", "-p", "no:cacheprovider")


# ------------------------------------------------------------------ torchrun across namespaces


def test_torchrun_two_nodes_in_network_namespaces(pytester, repo, netns_pair):
    """(a) Two pytest processes, each in its own network namespace, run the demo's torchrun +
    gloo model together: the all_reduce sum proves both joined; gloo listens on the veth
    address named by GLOO_SOCKET_IFNAME."""
    need_torch()
    copy_demo(pytester.path)
    model = repo.model("dist", script="scripts/dummy_torchrun/run.sh", args="--steps 5", timeout=300)
    assert model["name"] == "dist"
    nodes = Nodes(pytester.path)
    # node 1 first: it retries until node 0 listens
    for rank in (1, 0):
        ctx = node_context(rank, MASTER_ADDR="10.200.0.1", MASTER_PORT=29500, GLOO_SOCKET_IFNAME=netns_pair.veth[rank],
                           rendezvous_timeout=120)
        nodes.start(rank, ctx, netns=netns_pair.ns[rank])
        time.sleep(1.0)
    n0, n1 = nodes.wait(timeout=400)
    assert (n0.rc, n1.rc) == (0, 0), show([n0, n1])
    for node in (n0, n1):
        log = node.log("dist")
        r = node.rank
        assert (f"runner: torchrun --nproc_per_node 1 --nnodes 2 --node_rank {r} --master_addr 10.200.0.1 "
                "--master_port 29500") in log
        assert f"rank {r}/2 on " in log and "all_reduce sum 3 (expected 3)" in log, log
        assert f"GLOO_SOCKET_IFNAME={netns_pair.veth[r]}" in log
        assert f"gloo listens on ['{netns_pair.addr[r]}:" in log, log  # the veth's address, not loopback
        assert "rendezvous: all 2 nodes joined" in log
        props = node.props()["dist"]
        assert (props["node_rank"], props["nnodes"], props["master_addr"]) == (str(r), "2", "10.200.0.1")
    [row0], [row1] = n0.perf(), n1.perf()
    assert row0["status"] == "SUCCESS" and float(row0["performance"]) > 0
    assert row0["metric"] == "samples_per_second" and row0["nnodes"] == "2" and row0["launcher"] == "torchrun"
    # node 1 passes on its own exit code; the run's value is node 0's
    assert row1["status"] == "SUCCESS" and row1["performance"] == "" and row1["nnodes"] == "2"
    assert n1.props()["dist"]["performance_reported_by"] == "node_rank 0"
    assert n0.props()["dist"]["peers_passed"] == "1/1"


# ------------------------------------------------------------------ rendezvous timeout


@pytest.mark.parametrize("rank, missing", [(0, "[1]"), (1, "[0]")])
def test_node_whose_peer_never_starts_fails_within_the_rendezvous_timeout(pytester, repo, rank, missing):
    """(c) No peer: the item fails after rendezvous_timeout (not the model's 600 s timeout),
    naming the ranks that never joined, and the script never starts."""
    repo.model("m", PERF_OK, timeout=600)
    port = free_port_pair()
    ctx = node_context(rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, rendezvous_timeout=2)
    start = time.monotonic()
    res = pytester.runpytest(*LOCAL, "--mad-tags=t", f"--mad-context={json.dumps(ctx)}")
    elapsed = time.monotonic() - start
    res.assert_outcomes(failed=1)
    assert (f"m: rendezvous timed out after 2 s at 127.0.0.1:{port + 1}; ranks that did not join: {missing}"
            in res.stdout.str())
    assert elapsed < 20
    # a node's own folders (nodes may share this checkout)
    assert "running m" not in (pytester.path / "mad_logs" / f"node{rank}" / "m.log").read_text()


def test_rendezvous_port_from_the_context(pytester, repo):
    repo.model("m", PERF_OK)
    port = free_port_pair()
    ctx = node_context(0, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, rendezvous_timeout=1,
                       rendezvous_port=port + 1)
    res = pytester.runpytest(*LOCAL, "--mad-tags=t", f"--mad-context={json.dumps(ctx)}")
    out = res.stdout.str()
    assert f"multi-node: node 0 of 2, torchrun, master 127.0.0.1:{port}, rendezvous port {port + 1} (timeout 1 s)" in out
    assert f"at 127.0.0.1:{port + 1}; ranks that did not join: [1]" in out


# ------------------------------------------------------------------ results of several nodes


def test_rank_tagged_values_of_both_nodes_are_combined_on_node_0(pytester, repo):
    repo.model("tagged", """
        echo "[rank $NODE_RANK] performance: $((10 + NODE_RANK)) samples_per_second"
        echo "[rank $NODE_RANK] performance: 3 ms_per_step"
    """)
    port = free_port_pair()
    nodes = Nodes(pytester.path)
    for rank in (0, 1):
        nodes.start(rank, node_context(rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, rendezvous_timeout=60))
    n0, n1 = nodes.wait(timeout=120)
    assert (n0.rc, n1.rc) == (0, 0), show([n0, n1])
    [row0], [row1] = n0.perf(), n1.perf()
    assert (row0["performance"], row0["metric"], row0["status"]) == ("21", "samples_per_second", "SUCCESS")
    assert (row1["performance"], row1["status"]) == ("", "SUCCESS")
    props = n0.props()["tagged"]
    assert props["aggregation"] == "sum" and props["aggregated_ranks"] == "2", props
    assert n1.props()["tagged"]["rank_values"] == "1"  # the first value of each rank, as madengine reads


def test_other_nodes_pass_without_performance_and_fail_on_their_own_output(pytester, repo):
    """Three models in one session, so three barriers: node 1 prints no performance line (passes);
    node 1 fails alone and node 0 passes with a warning naming it; node 1 fails after printing
    per-rank values and node 0 fails too, since its sum would leave node 1's ranks out."""
    repo.model("a_quiet", """
        if [ "$NODE_RANK" = 0 ]; then echo "performance: 5 samples_per_second"; fi
        echo "MASTER_ADDR=$MASTER_ADDR NNODES=$NNODES NODE_RANK=$NODE_RANK launcher=$MAD_LAUNCHER"
    """)
    repo.model("b_peerfail", """
        if [ "$NODE_RANK" = 1 ]; then echo "node 1 breaks"; exit 3; fi
        echo "performance: 6 samples_per_second"
    """)
    repo.model("c_partial", """
        echo "[rank $((2 * NODE_RANK))] performance: 10 samples_per_second"
        echo "[rank $((2 * NODE_RANK + 1))] performance: 11 samples_per_second"
        if [ "$NODE_RANK" = 1 ]; then exit 3; fi
    """)
    port = free_port_pair()
    nodes = Nodes(pytester.path)
    for rank in (0, 1):
        nodes.start(rank, node_context(rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, rendezvous_timeout=60))
    n0, n1 = nodes.wait(timeout=120)
    assert n0.rc == 1 and n1.rc == 1, show([n0, n1])
    assert "MASTER_ADDR=127.0.0.1 NNODES=2 NODE_RANK=1 launcher=torchrun" in n1.log("a_quiet")
    rows0 = {r["model"]: r for r in n0.perf()}
    rows1 = {r["model"]: r for r in n1.perf()}
    assert rows0["a_quiet"]["performance"] == "5" and rows1["a_quiet"]["status"] == "SUCCESS"
    assert rows1["b_peerfail"]["status"] == "FAILURE"
    assert rows0["b_peerfail"]["status"] == "SUCCESS" and rows0["b_peerfail"]["performance"] == "6"
    assert "b_peerfail - b_peerfail: exit code 3" in n1.out
    props0 = n0.props()["b_peerfail"]
    assert props0["peers_passed"] == "0/1"
    assert "node 1 failed: exit code 3" in props0["warning"]
    # per-rank values from node 0 only: a partial sum is not the run's figure
    assert rows0["c_partial"]["status"] == "FAILURE" and rows0["c_partial"]["performance"] == ""
    assert ("c_partial: per-rank results are incomplete: node(s) [1] reported no per-rank values "
            "(node 1 failed: exit code 3)") in n0.out


def test_a_node_at_another_model_does_not_start_it(pytester, repo):
    """Different selections on the nodes: they never start different models together."""
    repo.model("one", PERF_OK)
    repo.model("two", PERF_OK, tags=["u"])
    port = free_port_pair()
    nodes = Nodes(pytester.path)
    nodes.start(0, node_context(0, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, rendezvous_timeout=3))
    nodes.tags = "u"
    nodes.start(1, node_context(1, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, rendezvous_timeout=3))
    n0, n1 = nodes.wait(timeout=60)
    assert n0.rc == 1 and n1.rc == 1, show([n0, n1])
    assert "ranks that did not join: [1]" in n0.out
    assert "node 0 is at model 'one'" in n1.out


# ------------------------------------------------------------------ mpirun


RANKS_PY = """
import os
import time
import torch
import torch.distributed as dist

rank, world = int(os.environ["OMPI_COMM_WORLD_RANK"]), int(os.environ["OMPI_COMM_WORLD_SIZE"])
dist.init_process_group("gloo", init_method=f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
                        rank=rank, world_size=world)
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)
# mpirun forwards each rank's output in chunks of its own choosing: two ranks printing at the
# same moment can have their lines joined ("...secondrank 1 of 2"). Take turns.
time.sleep(0.5 * rank)
print(f"rank {rank} of {world}: all_reduce sum {t.item():g}", flush=True)
print(f"rank {rank} performance: {100 + rank} samples_per_second", flush=True)
dist.barrier()
os._exit(0)  # no gloo teardown at exit: see scripts/dummy_torchrun/train.py
"""


@pytest.mark.parametrize("args, runner", [
    ({"MAD_RUNTIME_NGPUS": 2}, "mpirun -np 2"),
    ({"NNODES": 2, "MAD_RUNTIME_NGPUS": 1, "HOST_LIST": "localhost:1,127.0.0.1:1"},
     "mpirun -np 2 --host localhost:1,127.0.0.1:1"),
])
def test_mpirun_two_ranks(pytester, repo, args, runner):
    """(d) RUNNER mpirun: two ranks (single-node form, and the host-list form with two local
    'hosts'), joined by a gloo all_reduce; their rank-tagged values are summed."""
    need_mpirun()
    need_torch()
    repo.script("scripts/mpi/ranks.py", RANKS_PY)
    repo.model("mpi", 'echo "runner: $MAD_MULTI_NODE_RUNNER"\n$MAD_MULTI_NODE_RUNNER python3 ranks.py\n',
               script="scripts/mpi/run.sh", timeout=300)
    port = free_port_pair()
    ctx = {"multi_node_args": {"RUNNER": "mpirun", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, **args}}
    res = pytester.runpytest(*LOCAL, "--mad-tags=t", f"--mad-context={json.dumps(ctx)}", "-o",
                             "junit_family=xunit1", "--junitxml=junit.xml")
    log = (pytester.path / "mad_logs" / "mpi.log").read_text()
    res.assert_outcomes(passed=1)
    assert f"runner: {runner}" in log
    assert "rank 0 of 2: all_reduce sum 3" in log and "rank 1 of 2: all_reduce sum 3" in log, log
    res.stdout.fnmatch_lines(["*mpi*SUCCESS*201*samples_per_second*"])
    junit = (pytester.path / "junit.xml").read_text()
    assert 'name="aggregation" value="sum"' in junit and 'name="launcher" value="mpirun"' in junit


# ------------------------------------------------------------------ the data mirror


def test_missing_mirror_is_a_usage_error_and_nothing_is_created(pytester, repo, tmp_path):
    repo.model("m", PERF_OK)
    missing = tmp_path / "nfs" / "data"
    res = pytester.runpytest(*LOCAL, "--mad-tags=t", f"--mad-force-mirror-local={missing}")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"*--mad-force-mirror-local {missing}: no such folder; it is not created here*"])
    assert not (tmp_path / "nfs").exists()


def test_mirror_single_node_sets_mad_datahome(pytester, repo, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "input.txt").write_text("42\n")
    repo.model("m", 'echo "datahome=$MAD_DATAHOME"\necho "performance: $(cat "$MAD_DATAHOME/input.txt") items_per_s"\n')
    res = pytester.runpytest(*LOCAL, "--mad-tags=t", f"--mad-force-mirror-local={tmp_path / 'data'}")
    res.assert_outcomes(passed=1)
    assert f"datahome={tmp_path / 'data'}" in (pytester.path / "mad_logs" / "m.log").read_text()


def test_shared_mirror_passes_and_unshared_mirror_fails_every_node(pytester, repo, tmp_path):
    """(e) Node 0 writes a marker into the mirror; node 1 must see it after the barrier."""
    shared, mine, theirs = tmp_path / "shared", tmp_path / "n0", tmp_path / "n1"
    for d in (shared, mine, theirs):
        d.mkdir()
    repo.model("m", 'echo "datahome=$MAD_DATAHOME"\necho "performance: 1 items_per_s"\n')
    port = free_port_pair()
    nodes = Nodes(pytester.path)
    for rank in (0, 1):
        nodes.start(rank, node_context(rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, rendezvous_timeout=60),
                    f"--mad-force-mirror-local={shared}")
    n0, n1 = nodes.wait(timeout=120)
    assert (n0.rc, n1.rc) == (0, 0), show([n0, n1])
    assert f"datahome={shared}" in n1.log("m")
    assert list(shared.iterdir()) == []  # the marker is removed

    port = free_port_pair()
    nodes = Nodes(pytester.path)
    for rank, folder in ((0, mine), (1, theirs)):
        nodes.start(rank, node_context(rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, rendezvous_timeout=60),
                    f"--mad-force-mirror-local={folder}")
    start = time.monotonic()
    n0, n1 = nodes.wait(timeout=120)
    assert time.monotonic() - start < 40  # told at the barrier, not after the rendezvous timeout
    assert (n0.rc, n1.rc) == (1, 1), show([n0, n1])
    assert f"m: {theirs} is not shared between the nodes: node 0's marker" in n1.out
    assert f"aborted: node 1: {theirs} is not shared between the nodes" in n0.out
    assert "datahome=" not in n0.log("m") and "datahome=" not in n1.log("m")  # no script started
    assert list(mine.iterdir()) == [] and list(theirs.iterdir()) == []


def test_multi_node_fixture(pytester):
    pytester.makepyfile(test_fx="""
        def test_it(multi_node):
            assert (multi_node.nnodes, multi_node.node_rank, multi_node.master_addr) == (3, 2, "h0")
            assert multi_node.configured and multi_node.needs_barrier

        def test_plain():
            pass
    """)
    ctx = {"multi_node_args": {"NNODES": "3", "NODE_RANK": "2", "MASTER_ADDR": "h0"}}
    res = pytester.runpytest("-p", "no:cacheprovider", f"--mad-context={json.dumps(ctx)}", "test_fx.py")
    res.assert_outcomes(passed=2)
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-context={'multi_node_args': {'NODE_RANK': 2}}",
                             "test_fx.py")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*'NODE_RANK' is out of range: 2 (NNODES is 1, so ranks are 0..0)*"])


def test_single_node_runner_unchanged_without_multi_node_args(pytester, repo):
    repo.model("m", 'echo "runner=$MAD_MULTI_NODE_RUNNER master=${MASTER_ADDR:-unset}"\necho "performance: 1 x_per_s"\n')
    res = pytester.runpytest(*LOCAL, "--mad-tags=t")
    res.assert_outcomes(passed=1)
    log = (pytester.path / "mad_logs" / "m.log").read_text()
    assert "runner=torchrun --standalone --nproc_per_node=1 master=unset" in log
    assert "multi-node" not in res.stdout.str()
