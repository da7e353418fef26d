"""The `slurm` key deployment end to end, on the cluster of .ci/setup-slurm.sh (nodes n1..n4
of partition `debug`, all on this host, each node in its own run folder).

Real jobs: torchrun on one node (the launcher honoured) and on two nodes (a gloo all_reduce
with torch on the CPU, NODE_RANK/MASTER_ADDR right on each node), megatron and torchtitan
(their variables reach every task), slurm_multi (a `.slurm` script as the job on two nodes,
and the MAD-shaped zoo of tests/data/mad_zoo), a job past its deadline, the preflight around
a drained node, and a slurm_multi job whose registry image is pulled on every node (Docker and
the open registry of .ci/setup-docker.sh). Model names start with `madslurm`, so the jobs
(`mad-<run id>-<model>`) and the pushed image (`madslurm/base`) are ours.

Without a cluster these tests skip, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ModelRepo
from .test_slurm import PARTITION, _unavailable, cluster, props, sacct_state, sh

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("cluster")]
ROOT = Path(__file__).resolve().parents[2]
__all__ = ["cluster"]

# The stand-in workload: checks the variables it is given as NAME=value arguments (in every
# process torchrun starts), then one gloo all_reduce over all ranks; rank 0 reports the sum.
STANDIN_PY = """
    import os, sys, torch, torch.distributed as dist
    per_rank = "--per-rank" in sys.argv
    for arg in (a for a in sys.argv[1:] if a != "--per-rank"):
        name, want = arg.split("=", 1)
        got = os.environ.get(name)
        assert got == want, f"{name}={got!r}, expected {want!r}"
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    env = os.environ
    for turn in range(world):  # one rank at a time: the lines of two ranks never mix
        if turn == rank:
            print(f"rank {rank} of {world} node_rank {env.get('NODE_RANK', '-')} master {env.get('MASTER_ADDR', '-')} "
                  f"on {env['SLURMD_NODENAME']} in {os.getcwd()}: sum {t.item():g}", flush=True)
        dist.barrier()
    if per_rank:  # every rank reports its own value, tagged: combined across the nodes
        print(f"[rank{rank}]: performance: {10 + rank} samples_per_second", flush=True)
    elif rank == 0:
        print(f"performance: {t.item():g} allreduce_sum", flush=True)
    dist.barrier()
    os._exit(0)  # no gloo teardown at exit: see scripts/dummy_torchrun/train.py
"""


def needs_torch() -> None:
    if importlib.util.find_spec("torch") is None:
        _unavailable("torch is not installed (pip install torch==2.13.0, the CPU wheel)")


def standin(repo: ModelRepo, name: str, checks: str, **fields: object) -> None:
    repo.script(f"scripts/{name}/standin.py", STANDIN_PY)
    repo.model(name, f'#!/usr/bin/env bash\nset -e\necho "runner: $MAD_MULTI_NODE_RUNNER"\n'
                     f"$MAD_MULTI_NODE_RUNNER standin.py {checks}\n", **fields)


def argv(*extra: str, tags: str, context: dict) -> list[str]:
    return ["-p", "no:cacheprovider", f"--mad-tags={tags}", "--mad-context", repr(context),
            "-o", "junit_family=xunit1", "--junitxml=junit.xml", *extra]


def perf_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path / "perf.csv", newline="") as fh:
        return {r["model"]: r for r in csv.DictReader(fh)}


def slurm(**keys: object) -> dict:
    return {"slurm": {"partition": PARTITION, "time": "3", "exclusive": False, **keys}}


def test_dry_run_prints_the_sbatch_plan(pytester: pytest.Pytester) -> None:
    ModelRepo(pytester.path).model("madslurm_plan", "echo 'performance: 1 x'\n",
                                   slurm={"nodes": 2, "modules": []}, distributed={"launcher": "torchtitan"})
    res = pytester.runpytest_subprocess(*argv("--mad-dry-run", tags="madslurm_plan",
                                              context=slurm(account="", qos="")), timeout=60)
    out = res.stdout.str()
    assert "#SBATCH --nodes=2" in out and "srun --ntasks-per-node=1 --kill-on-bad-exit=1" in out, out
    assert "export TORCHTITAN_PIPELINE_PARALLEL_SIZE=2" in out and "--master_addr='\"$MAD_HOST_0\"'" in out
    assert not list(pytester.path.glob("mad_logs/**/job.sbatch"))  # nothing written, nothing submitted


def test_single_node_torchrun_honours_the_launcher(pytester: pytest.Pytester) -> None:
    needs_torch()
    repo = ModelRepo(pytester.path)
    standin(repo, "madslurm_one", "MAD_LAUNCHER=torchrun CARD_VAR=c1 SLURM_VAR=s1 CTX_VAR=x1",
            distributed={"launcher": "torchrun", "nproc_per_node": 2}, env_vars={"CARD_VAR": "c1"})
    context = {**slurm(env_vars={"SLURM_VAR": "s1"}), "env_vars": {"CTX_VAR": "x1"}}
    res = pytester.runpytest_subprocess(*argv(tags="madslurm_one", context=context), timeout=180)
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["*executor slurm (slurm in context)*", "*madslurm_one*SUCCESS*3*allreduce_sum*"])
    log = (pytester.path / "mad_logs" / "madslurm_one.log").read_text()
    assert "runner: torchrun --standalone --nproc_per_node=2" in log  # madengine always runs torchrun --standalone
    assert len(re.findall(r"rank [01] of 2 node_rank - master \S+ on n\d", log)) == 2, log
    p = props(pytester.path)["madslurm_one"]
    assert p["slurm_state"] == "COMPLETED" and p.get("nnodes", "1") == "1" and p["launcher"] == "torchrun"


def test_two_nodes_torchrun_allreduce_per_node(pytester: pytest.Pytester) -> None:
    needs_torch()
    repo = ModelRepo(pytester.path)
    standin(repo, "madslurm_two", "MAD_LAUNCHER=torchrun NNODES=2 MAD_DEPLOYMENT_TYPE=slurm",
            slurm={"nodes": 2}, distributed={"launcher": "torchrun"})
    res = pytester.runpytest_subprocess(*argv(tags="madslurm_two", context=slurm()), timeout=180)
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["*madslurm_two*SUCCESS*3*allreduce_sum*"])
    log = (pytester.path / "mad_logs" / "madslurm_two.log").read_text()
    ranks = re.findall(r"rank (\d) of 2 node_rank (\d) master (\S+) on (n\d) in (\S+): sum 3", log)
    assert sorted(r[0] for r in ranks) == ["0", "1"], log
    by_rank = {r[0]: r for r in ranks}
    assert by_rank["0"][1] == "0" and by_rank["1"][1] == "1"  # NODE_RANK from SLURM_NODEID
    assert by_rank["0"][2] == by_rank["1"][2] == "127.0.0.1"  # the first node's NodeAddr
    assert by_rank["0"][3] != by_rank["1"][3]  # two nodes
    assert by_rank["0"][4].endswith("node0") and by_rank["1"][4].endswith("node1")  # a folder per node
    p = props(pytester.path)["madslurm_two"]
    assert p["nnodes"] == "2" and p["performance_reported_by"] == "node_rank 0"


def test_per_rank_values_of_two_nodes_are_combined(pytester: pytest.Pytester) -> None:
    needs_torch()
    standin(ModelRepo(pytester.path), "madslurm_ranks", "--per-rank", slurm={"nodes": 2})
    res = pytester.runpytest_subprocess(*argv(tags="madslurm_ranks", context=slurm()), timeout=180)
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["*madslurm_ranks*SUCCESS*21*samples_per_second*"])  # 10 (node 0) + 11 (node 1)
    p = props(pytester.path)["madslurm_ranks"]
    assert p["aggregation"] == "sum" and p["aggregated_ranks"] == "2"


def test_megatron_and_torchtitan_variables_reach_every_task(pytester: pytest.Pytester) -> None:
    needs_torch()
    repo = ModelRepo(pytester.path)
    standin(repo, "madslurm_megatron", "MAD_LAUNCHER=megatron TENSOR_MODEL_PARALLEL_SIZE=1 "
            "PIPELINE_MODEL_PARALLEL_SIZE=2 CONTEXT_PARALLEL_SIZE=1 EXTRA=e", distributed={"launcher": "megatron"},
            env_vars={"EXTRA": "e"})
    standin(repo, "madslurm_titan", "MAD_LAUNCHER=torchtitan TORCHTITAN_TENSOR_PARALLEL_SIZE=1 "
            "TORCHTITAN_PIPELINE_PARALLEL_SIZE=2 TORCHTITAN_FSDP_ENABLED=1 TORCHTITAN_CONTEXT_PARALLEL_SIZE=1",
            distributed={"launcher": "torchtitan"})
    res = pytester.runpytest_subprocess(*argv(tags="madslurm_megatron,madslurm_titan", context=slurm(nodes=2)),
                                        timeout=300)
    res.assert_outcomes(passed=2)
    for name in ("madslurm_megatron", "madslurm_titan"):
        log = (pytester.path / "mad_logs" / f"{name}.log").read_text()
        assert len(re.findall(r"rank \d of 2 node_rank \d master 127\.0\.0\.1 on n\d", log)) == 2, log
        assert "--nnodes=2 --nproc_per_node=1 --node_rank=" in log


def test_slurm_multi_script_is_the_job_on_two_nodes(pytester: pytest.Pytester) -> None:
    repo = ModelRepo(pytester.path)
    body = (
        "#!/bin/bash\n#SBATCH --nodes=2\n"
        'echo "xP=$xP yD=$yD model=$MODEL_NAME launcher=$MAD_LAUNCHER nodes=$SLURM_NNODES"\n'
        "srun --ntasks=\"$SLURM_NNODES\" --ntasks-per-node=1 bash -c 'echo \"task $SLURM_PROCID on $SLURMD_NODENAME\"' "
        "> tasks.txt\ncat tasks.txt\nmkdir -p results\n"
        "printf 'model,performance,metric\\nmadslurm_multi,%s,nodes_seen\\n' "
        "\"$(sed 's/.* on //' tasks.txt | sort -u | wc -l)\" > results/perf.csv\n")
    disagg = {"launcher": "slurm_multi", "sglang_disagg": {"prefill_nodes": 1, "decode_nodes": 1}}
    repo.model("madslurm_multi", body, script="scripts/madslurm_multi/run.slurm", distributed=disagg,
               env_vars={"MODEL_NAME": "tiny"}, slurm={"nodes": 2, "results_dir": "results"})
    repo.model("madslurm_noresult", "#!/bin/bash\necho 'performance: 5 x (not read: results_dir is)'\n",
               script="scripts/madslurm_noresult/run.slurm", distributed=disagg,
               slurm={"nodes": 2, "results_dir": "results"})
    res = pytester.runpytest_subprocess(*argv(tags="madslurm_multi,madslurm_noresult", context=slurm()), timeout=180)
    res.assert_outcomes(passed=1, failed=1)
    res.stdout.fnmatch_lines(["*madslurm_noresult: slurm.results_dir: no perf*.csv written in*"])
    res.stdout.fnmatch_lines(["*madslurm_multi*SUCCESS*2*nodes_seen*"])
    log = (pytester.path / "mad_logs" / "madslurm_multi.log").read_text()
    assert "xP=1 yD=1 model=tiny launcher=slurm_multi nodes=2" in log
    assert len(set(re.findall(r"task \d on (n\d)", log))) == 2, log
    rows = perf_rows(pytester.path)
    assert rows["madslurm_noresult"]["status"] == "FAILURE" and rows["madslurm_noresult"]["performance"] == ""


def test_the_mad_zoo_slurm_cards(pytester: pytest.Pytester) -> None:
    """tests/data/mad_zoo's disagg_slurm (slurm_multi, xP/yD from the card) and batch_sbatch (a
    .sbatch script as a 2-node task job): the context's settings win over the cards'."""
    shutil.copytree(ROOT / "tests" / "data" / "mad_zoo", pytester.path, dirs_exist_ok=True)
    context = slurm(gpus_per_node=0, nodes=2)
    res = pytester.runpytest_subprocess(*argv(tags="slurm_scripts", context=context), timeout=180)
    res.assert_outcomes(passed=2)
    res.stdout.fnmatch_lines(["*dummy_slurm/disagg_slurm*SUCCESS*3.25*requests_per_second*"])
    log = (pytester.path / "mad_logs" / "dummy_slurm" / "disagg_slurm.log").read_text()
    assert "prefill=1 decode=1 model=tiny" in log
    batch = (pytester.path / "mad_logs" / "dummy_slurm" / "batch_sbatch.slurm" / "job.sbatch").read_text()
    assert "#SBATCH --nodes=2\n" in batch and "--gpus-per-node" not in batch
    p = props(pytester.path)["dummy_slurm/batch_sbatch"]
    assert p["node1_performance"] == "11 samples_per_second"  # a worker's number: kept, never the run's


def test_a_job_past_its_deadline_is_cancelled_with_a_row(pytester: pytest.Pytester) -> None:
    ModelRepo(pytester.path).model("madslurm_late", "echo started\nsleep 300\n", timeout=3)
    res = pytester.runpytest_subprocess(*argv(tags="madslurm_late", context=slurm()), timeout=120)
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*madslurm_late: timed out after 3 s*"])
    p = props(pytester.path)["madslurm_late"]
    assert sacct_state(p["slurm_job_id"], "CANCELLED").startswith("CANCELLED")
    assert perf_rows(pytester.path)["madslurm_late"]["status"] == "FAILURE"


@pytest.fixture
def drained_n4() -> Iterator[str]:
    sh("scontrol", "update", "nodename=n4", "state=drain", "reason=madslurm-preflight-test")
    try:
        yield "n4"
    finally:
        sh("scontrol", "update", "nodename=n4", "state=resume", check=False)


def test_preflight_excludes_a_drained_node(pytester: pytest.Pytester, drained_n4: str) -> None:
    repo = ModelRepo(pytester.path)
    repo.model("madslurm_pre3", 'echo "on $SLURMD_NODENAME"\necho "performance: 1 x"\n', slurm={"nodes": 3})
    repo.model("madslurm_pre4", "echo 'performance: 1 x'\n", slurm={"nodes": 4})
    repo.model("madslurm_pinned", "echo 'performance: 1 x'\n", slurm={"nodes": 1, "nodelist": "n4",
                                                                       "queue_timeout": 3})
    res = pytester.runpytest_subprocess(*argv(tags="madslurm_pre3,madslurm_pre4,madslurm_pinned",
                                              context=slurm(preflight=True)), timeout=180)
    res.assert_outcomes(passed=1, failed=2)
    log = (pytester.path / "mad_logs" / "madslurm_pre3.log").read_text()
    assert "preflight: good nodes n1, n2, n3; excluded: n4: state drain" in log, log
    assert set(re.findall(r"on (n\d)", log)) == {"n1", "n2", "n3"}
    res.stdout.fnmatch_lines([
        "*madslurm_pre4: preflight: 3 healthy idle node(s) (n1, n2, n3) but the job needs slurm.nodes 4; not "
        "submitted (n4: state drain)*",
        "*madslurm_pinned: SLURM job * still PENDING after 3 s (Reason=*); cancelled*"])
    p = props(pytester.path)
    assert "slurm_job_id" not in p["madslurm_pre4"] or not p["madslurm_pre4"]["slurm_job_id"]
    rows = perf_rows(pytester.path)
    assert rows["madslurm_pre4"]["status"] == rows["madslurm_pinned"]["status"] == "FAILURE"


@pytest.fixture
def pushed_image() -> Iterator[str]:
    """The base image pushed to the open local registry under our prefix, then removed here, so
    only the job's `docker pull` can bring it back."""
    if shutil.which("docker") is None:
        _unavailable("docker is not installed; run .ci/setup-docker.sh")
    from .conftest import DOCKER_BASE

    image = "127.0.0.1:5000/madslurm/base:pull"
    try:
        sh("docker", "image", "inspect", DOCKER_BASE, timeout=30)
        sh("docker", "tag", DOCKER_BASE, image, timeout=30)
        sh("docker", "push", "-q", image, timeout=120)
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"cannot push to the local registry 127.0.0.1:5000 ({exc}); run .ci/setup-docker.sh")
    sh("docker", "rmi", image, timeout=30)
    try:
        yield image
    finally:
        sh("docker", "rmi", image, check=False, timeout=30)


@pytest.mark.docker
def test_slurm_multi_pulls_a_registry_image_on_every_node(pytester: pytest.Pytester, pushed_image: str) -> None:
    body = ("#!/bin/bash\nsrun --ntasks=\"$SLURM_NNODES\" --ntasks-per-node=1 bash -c "
            "'docker image inspect --format \"present on $SLURMD_NODENAME\" \"$DOCKER_IMAGE_NAME\"'\n"
            "echo 'performance: 1 pulled'\n")
    ModelRepo(pytester.path).model("madslurm_pull", body, script="scripts/madslurm_pull/run.slurm",
                                   distributed={"launcher": "slurm_multi"}, env_vars={"DOCKER_IMAGE_NAME": pushed_image},
                                   slurm={"nodes": 2})
    res = pytester.runpytest_subprocess(*argv(tags="madslurm_pull", context=slurm()), timeout=180)
    res.assert_outcomes(passed=1)
    log = (pytester.path / "mad_logs" / "madslurm_pull.log").read_text()
    assert f"docker pull {pushed_image}" in log  # the plan
    assert len(set(re.findall(r"present on (n\d)", log))) == 2, log
