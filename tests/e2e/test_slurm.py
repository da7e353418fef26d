"""The SLURM executor end to end, against the real cluster of .ci/setup-slurm.sh
(slurmctld, slurmdbd + MariaDB, four slurmd as nodes n1..n4 of partition `debug`).

Each test writes a tiny madengine project into a temporary folder and runs pytest on it in
a subprocess (each run gets its own poller, as a real run does). Job names carry the run
id, so tests never mistake each other's jobs. The TIME-limit test waits for SLURM's own
TIMEOUT (60-90 s), so its run starts with the module and is checked at the end.

Without a cluster these tests skip, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from junitparser import JUnitXml, Properties, Property

from pytest_madengine.executors.slurm.records import expand_hostlist

from .conftest import ModelRepo

pytestmark = pytest.mark.slurm

IN_CI = os.environ.get("CI", "").strip().lower() == "true"
ROOT = Path(__file__).resolve().parents[2]
PARTITION = os.environ.get("MAD_TEST_SLURM_PARTITION", "debug")

PERF = 'echo "node $NODE_RANK of $NNODES on $SLURMD_NODENAME in $PWD"\necho "performance: 12.5 samples_per_second"\n'

ALLREDUCE_PY = """
    import os, torch, torch.distributed as dist
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    print(f"rank {rank} of {world} on node {os.environ['SLURMD_NODENAME']}: sum {t.item():g}", flush=True)
    if rank == 0:
        print(f"performance: {t.item():g} allreduce_sum", flush=True)
    dist.barrier()
    os._exit(0)  # no gloo teardown at exit: see scripts/dummy_torchrun/train.py
"""


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def sh(*argv: str, check: bool = True, timeout: float = 60) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{argv}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


@pytest.fixture(scope="module")
def cluster() -> None:
    if shutil.which("sbatch") is None:
        _unavailable("SLURM is not installed; run .ci/setup-slurm.sh")
    try:
        nodes = sh("sinfo", "-h", "-p", PARTITION, "-N", "-o", "%N %t", timeout=20).split("\n")
        sh("sacct", "-n", "-X", "-S", "now-1minutes", timeout=20)
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"the SLURM cluster does not answer ({exc}); run .ci/setup-slurm.sh")
    up = [n for n in nodes if n.strip() and n.split()[-1].rstrip("*~#") in ("idle", "mix", "alloc", "comp")]
    if len(up) < 4:
        _unavailable(f"partition {PARTITION} needs 4 nodes up, sinfo says {nodes}; run .ci/setup-slurm.sh")


def ctx(**slurm_args: object) -> str:
    args = {"PARTITION": PARTITION, "TIME": "2", **slurm_args}
    return repr({"slurm_args": args})


def pytest_argv(*extra: str, tags: str, context: str) -> list[str]:
    return ["-p", "no:cacheprovider", f"--mad-tags={tags}", "--mad-context", context,
            "-o", "junit_family=xunit1", "--junitxml=junit.xml", *extra]


def props(path: Path) -> dict[str, dict[str, str]]:
    xml = JUnitXml.fromfile(str(path / "junit.xml"))
    out = {}
    for suite in xml:
        for case in suite:
            out[case.name] = {p.name: p.value for ps in case.iterchildren(Properties)
                              for p in ps.iterchildren(Property)}
    return out


def stats(path: Path) -> dict:
    return json.loads((path / "mad_logs" / "slurm_poller.main.json").read_text())


def sacct_state(job_id: str, want: str, wait: float = 20.0) -> str:
    deadline = time.monotonic() + wait
    state = ""
    while time.monotonic() < deadline:
        state = sh("sacct", "-n", "-P", "-X", "-j", job_id, "--format=State").strip().split("\n")[-1]
        if state.startswith(want):
            break
        time.sleep(0.5)
    return state


def popen_pytest(path: Path, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pytest", *argv], cwd=path, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.fixture(scope="module")
def time_limit_run(cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, subprocess.Popen]]:
    """A job that outlives TIME=1 (minute): started with the module, checked at its end."""
    path = tmp_path_factory.mktemp("slurm_time_limit")
    ModelRepo(path).model("overtime", "echo started\nsleep 300\necho 'performance: 1 x'\n")
    proc = popen_pytest(path, *pytest_argv(tags="overtime", context=ctx(TIME="1")))
    yield path, proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


@pytest.fixture(autouse=True)
def _start_time_limit_run(time_limit_run: tuple[Path, subprocess.Popen]) -> None:
    """Every test depends on it, so the slow run begins before the first test."""


def test_native_two_nodes_torchrun_allreduce(pytester: pytest.Pytester) -> None:
    if importlib.util.find_spec("torch") is None:
        _unavailable("torch is not installed (pip install torch==2.13.0, the CPU wheel)")
    repo = ModelRepo(pytester.path)
    repo.script("scripts/ar/allreduce.py", ALLREDUCE_PY)
    repo.model("ar", '#!/usr/bin/env bash\nset -e\n$MAD_MULTI_NODE_RUNNER allreduce.py\n')
    res = pytester.runpytest_subprocess(*pytest_argv(tags="ar", context=ctx(NODES=2)), timeout=240)
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["*madengine: executor slurm (slurm_args in context)*",
                              "*ar*SUCCESS*3*allreduce_sum*"])
    log = (pytester.path / "mad_logs" / "ar.log").read_text()
    # both nodes joined one gloo group of two: each saw 1 + 2
    assert re.search(r"^\[n\d\] rank 0 of 2 on node (n\d): sum 3$", log, re.M), log
    assert re.search(r"^\[n\d\] rank 1 of 2 on node (n\d): sum 3$", log, re.M), log
    nodes = set(re.findall(r"rank \d of 2 on node (n\d)", log))
    p = props(pytester.path)["ar"]
    assert len(nodes) == 2 and nodes == set(expand_hostlist(p["nodes"])), (nodes, p["nodes"])
    assert p["slurm_state"] == "COMPLETED" and p["nnodes"] == "2" and p["partition"] == PARTITION
    assert p["slurm_job_id"].isdigit() and float(p["queue_wait_s"]) >= 0 and float(p["run_s"]) >= 0
    batch = (pytester.path / "mad_logs" / "ar.slurm" / "job.sbatch").read_text()
    assert "#SBATCH --nodes=2\n" in batch and "--gpus-per-node" not in batch
    # accounting through slurmdbd saw the job under our name
    rec = sh("sacct", "-n", "-P", "-X", "-j", p["slurm_job_id"], "--format=JobName,State").strip()
    assert re.fullmatch(r"mad-[0-9a-f]{12}-ar\|COMPLETED", rec.splitlines()[-1]), rec
    calls = stats(pytester.path)["calls"]
    assert calls.get("sacct", 0) >= 1 and "scontrol" not in calls, calls


def test_framework_disaggregated_prefill_decode_on_four_nodes(pytester: pytest.Pytester) -> None:
    shutil.copytree(ROOT / "scripts" / "sglang_disagg", pytester.path / "scripts" / "sglang_disagg")
    repo = ModelRepo(pytester.path)
    repo.model("qwen_disagg", "echo 'the framework runs, not this'\n", args="--model Qwen3-32B")
    context = ctx(FRAMEWORK="sglang_disagg", PREFILL_NODES=2, DECODE_NODES=2, DOCKER_IMAGE="")
    res = pytester.runpytest_subprocess(*pytest_argv(tags="qwen_disagg", context=context), timeout=180)
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["*qwen_disagg*SUCCESS*tokens_per_second*"])
    log = (pytester.path / "mad_logs" / "qwen_disagg.log").read_text()
    assert "Submitted batch job" in log and "Qwen3-32B on 4 node(s) (2 prefill, 2 decode)" in log
    assert len(re.findall(r"\[decode rank [23]\] served 16 request\(s\)", log)) == 2, log
    assert len(re.findall(r"\[prefill rank [01]\] 16 request\(s\) to 2 decode", log)) == 2, log
    assert log.index("performance:") < log.index("[prefill rank 1]")  # rank 0's log comes first
    p = props(pytester.path)["qwen_disagg"]
    assert p["nodes"] == "n[1-4]" and p["nnodes"] == "4" and p["slurm_state"] == "COMPLETED"


def test_failing_job_reports_state_exit_and_log_tail(pytester: pytest.Pytester) -> None:
    ModelRepo(pytester.path).model(
        "breaks", "echo \"node $NODE_RANK up\"\nif [ \"$NODE_RANK\" = 1 ]; then echo 'boom on node 1'; exit 3; fi\n"
                  "sleep 60\n")
    res = pytester.runpytest_subprocess(*pytest_argv(tags="breaks", context=ctx(NODES=2)), timeout=120)
    res.assert_outcomes(failed=1)
    res.stdout.re_match_lines([r".*breaks: SLURM job \d+ FAILED \(exit \d+:\d+\) on n.*"])
    res.stdout.fnmatch_lines(["*boom on node 1*"])  # the log tail is in the report
    assert props(pytester.path)["breaks"]["slurm_state"] == "FAILED"


def test_mad_timeout_scancels_the_job(pytester: pytest.Pytester) -> None:
    ModelRepo(pytester.path).model("sleepy", "echo started\nsleep 300\n")
    t0 = time.monotonic()
    res = pytester.runpytest_subprocess(*pytest_argv("--mad-timeout=3", tags="sleepy", context=ctx()), timeout=120)
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*sleepy: timed out after 3 s*"])
    assert time.monotonic() - t0 < 60
    p = props(pytester.path)["sleepy"]
    assert sacct_state(p["slurm_job_id"], "CANCELLED").startswith("CANCELLED")


def test_pending_longer_than_queue_timeout_is_cancelled(pytester: pytest.Pytester) -> None:
    ModelRepo(pytester.path).model("later", PERF)
    context = ctx(QUEUE_TIMEOUT=2, EXTRA_SBATCH=["--begin=now+3600"])
    res = pytester.runpytest_subprocess(*pytest_argv(tags="later", context=context), timeout=120)
    res.assert_outcomes(failed=1)
    res.stdout.re_match_lines([r".*later: SLURM job \d+ still PENDING after 2 s \(Reason=BeginTime\); cancelled.*"])
    assert sacct_state(props(pytester.path)["later"]["slurm_job_id"], "CANCELLED").startswith("CANCELLED")


def test_preflight_refuses_before_queueing(pytester: pytest.Pytester) -> None:
    ModelRepo(pytester.path).model("m", PERF)
    res = pytester.runpytest_subprocess(*pytest_argv(tags="m", context=ctx(PARTITION="gpu-typo")), timeout=60)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*slurm_args PARTITION: 'gpu-typo' is not a partition of this cluster*debug*"])
    res = pytester.runpytest_subprocess(*pytest_argv(tags="m", context=ctx(DOCKER_IMAGE="<supply-your-image>")),
                                        timeout=60)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*slurm_args DOCKER_IMAGE: '<supply-your-image>' looks like a placeholder*"])
    res = pytester.runpytest_subprocess(*pytest_argv(tags="m", context=ctx(TIME="1:75")), timeout=60)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*slurm_args TIME: '1:75': seconds must be below 60*"])
    res = pytester.runpytest_subprocess(*pytest_argv(tags="m", context=ctx(FRAMEWORK="nosuch")), timeout=60)
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*slurm_args FRAMEWORK 'nosuch': */scripts/nosuch/run.sh not found*"])
    assert "slurm_job_id" not in props(pytester.path)["m"]


def test_several_items_queue_together_and_results_use_sacct(pytester: pytest.Pytester) -> None:
    repo = ModelRepo(pytester.path)
    for i in range(3):
        repo.model(f"m{i}", "sleep 3\n" + PERF.replace("12.5", f"1{i}"))
    repo.model("multi", "#!/usr/bin/env bash\nprintf 'model,performance,metric\\na,1.5,x\\nb,2.5,y\\n' > out.csv\n",
               multiple_results="out.csv")
    t0 = time.monotonic()
    res = pytester.runpytest_subprocess(*pytest_argv(tags="m0,m1,m2,multi", context=ctx()), timeout=120)
    elapsed = time.monotonic() - t0
    res.assert_outcomes(passed=4)
    for i in range(3):
        assert "submitted ahead of its turn" in (pytester.path / "mad_logs" / f"m{i}.log").read_text()
    assert elapsed < 3 * 3 + 10, f"the jobs ran one after another ({elapsed:.1f} s)"
    res.stdout.fnmatch_lines(["*multi_a*SUCCESS*1.5*x*", "*multi_b*SUCCESS*2.5*y*"])
    s = stats(pytester.path)
    assert s["jobs"] == 4 and s["use_sacct"] is True
    assert s["calls"].get("squeue", 0) + s["calls"].get("sacct", 0) <= 12, s


def test_scontrol_fallback_without_accounting(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAD_SLURM_SACCT", "0")
    ModelRepo(pytester.path).model("noacct", PERF)
    pytester.makepyfile(test_fixture="def test_slurm_context(slurm_context):\n"
                                     "    assert (slurm_context.partition, slurm_context.time_s) == ('debug', 120)\n")
    res = pytester.runpytest_subprocess("test_fixture.py", *pytest_argv(tags="noacct", context=ctx()), timeout=120)
    res.assert_outcomes(passed=2)
    p = props(pytester.path)["noacct"]
    assert p["slurm_state"] == "COMPLETED" and p["nodes"].startswith("n")
    s = stats(pytester.path)
    assert s["use_sacct"] is False and s["calls"].get("scontrol", 0) >= 1 and "sacct" not in s["calls"], s


def _stop_slurmctld() -> None:
    pid = int(Path("/run/slurm/slurmctld.pid").read_text())
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    while Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
        assert time.monotonic() - t0 < 60, "slurmctld did not stop"


def _start_slurmctld() -> None:
    if subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0:
        return
    sh("slurmctld")
    t0 = time.monotonic()
    while subprocess.run(["scontrol", "ping"], capture_output=True).returncode != 0:
        time.sleep(0.2)
        assert time.monotonic() - t0 < 60, "slurmctld did not come back"


def test_monitoring_survives_a_slurmctld_restart(tmp_path: Path) -> None:
    """The controller goes away while the job runs and stays away past the model's end
    (srun then waits for it, and accounting has no end yet); the poller's calls fail or
    wait, and after the restart the job's COMPLETED state arrives and the item passes."""
    started, ended, calls = tmp_path / "started", tmp_path / "ended", tmp_path / "calls.log"
    ModelRepo(tmp_path).model("steady", f"touch {started}\nsleep 4\n" + PERF + f"touch {ended}\n")
    proc = popen_pytest(tmp_path, *pytest_argv(tags="steady", context=ctx()), env={"MAD_SLURM_CALL_LOG": str(calls)})
    deadline = time.monotonic() + 60
    while not started.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.1)
    try:
        _stop_slurmctld()
        down = time.time()
        while not ended.exists():
            assert time.monotonic() < deadline, "the job did not end while slurmctld was down"
            time.sleep(0.2)
        time.sleep(1)
        assert proc.poll() is None, proc.communicate()[0]
    finally:
        _start_slurmctld()
        up = time.time()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "steady" in out and "SUCCESS" in out
    assert props(tmp_path)["steady"]["slurm_state"] == "COMPLETED"
    # the poller did ask while the controller was away (a call failed, or waited it out)
    spans = [(float(t), float(d.rstrip("s"))) for t, d, *_ in (line.split() for line in calls.read_text().splitlines())]
    assert any(t < up and t + d > down for t, d in spans), (down, up, calls.read_text())


def test_ctrl_c_scancels_every_job_of_the_run(tmp_path: Path) -> None:
    repo = ModelRepo(tmp_path)
    started = tmp_path / "started"
    repo.model("a", f"touch {started}\nsleep 300\n")
    repo.model("b", "sleep 300\n")
    proc = popen_pytest(tmp_path, *pytest_argv(tags="a,b", context=ctx()))
    deadline = time.monotonic() + 60
    while not started.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0, out
    p = props(tmp_path)
    assert "interrupted" in p["a"]["reason"] and "interrupted" in p["b"]["reason"], p
    # b was submitted ahead of its turn: find it by the run's job name
    name_a = sh("sacct", "-n", "-P", "-X", "-j", p["a"]["slurm_job_id"], "--format=JobName").split()[-1]
    name_b = name_a[:-1] + "b"
    # slurmdbd can take a few seconds to record a job cancelled while pending under its name
    deadline = time.monotonic() + 20
    while True:
        id_b = sh("sacct", "-n", "-P", "-X", f"--name={name_b}", "-S", "now-10minutes", "--format=JobID").split()
        if id_b or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(id_b) <= 1, (name_b, id_b)
    for job_id in (p["a"]["slurm_job_id"], *id_b):
        assert sacct_state(job_id, "CANCELLED").startswith("CANCELLED"), job_id
    # whatever was queued for this run, nothing of it is left pending or running
    prefix = name_a[:-1]
    assert not [n for n in sh("squeue", "-h", "-o", "%j").split() if n.startswith(prefix)]


def test_time_limit_ends_in_timeout(time_limit_run: tuple[Path, subprocess.Popen]) -> None:
    path, proc = time_limit_run
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 1, out
    assert re.search(r"overtime: SLURM job \d+ TIMEOUT \(exit \d+:\d+\) on n\d", out), out
    p = props(path)["overtime"]
    assert p["slurm_state"] == "TIMEOUT" and 55 <= float(p["run_s"]) <= 120, p
