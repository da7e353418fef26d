"""Profiling tools (context ``tools``) and ``encapsulate_script`` end to end, with this repository's
own demo zoo (models.json, scripts/dummy_py, docker/demo) on the local and Docker executors."""

from __future__ import annotations

import csv
import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from .conftest import DOCKER_BASE
from .multinode_helpers import unavailable

REPO_ROOT = Path(__file__).resolve().parents[2]
EXECUTORS = ["local", "docker"]


@pytest.fixture
def zoo(pytester: pytest.Pytester) -> Path:
    shutil.copy2(REPO_ROOT / "models.json", pytester.path / "models.json")
    shutil.copytree(REPO_ROOT / "scripts/dummy_py", pytester.path / "scripts/dummy_py")
    shutil.copytree(REPO_ROOT / "docker", pytester.path / "docker")
    return pytester.path


def run(pytester: pytest.Pytester, executor: str, request: pytest.FixtureRequest,
        ctx: dict[str, object], *args: str) -> pytest.RunResult:
    if executor == "docker":
        request.getfixturevalue("client")
        ctx = {**ctx, "docker_build_arg": {"BASE_DOCKER": DOCKER_BASE}}
    return pytester.runpytest("-p", "no:cacheprovider", "--mad-tags=dummy_py", f"--mad-executor={executor}",
                              "-o", "junit_family=xunit1", "--junitxml=junit.xml", "-rA",
                              f"--mad-context={json.dumps(ctx)}", *args)


def properties(path: Path) -> dict[str, str]:
    case = ET.parse(path / "junit.xml").getroot().find(".//testcase")
    assert case is not None
    return {p.get("name", ""): p.get("value", "") for p in case.iter("property")}


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def cpu_tools(executor: str) -> list[str]:
    # the demo image has python3 but no strace: strace is checked for there separately
    return ["cpu_info_profiler", "rocblas_trace", "miopen_trace"] + (["strace"] if executor == "local" else [])


@pytest.mark.parametrize("executor", EXECUTORS)
def test_cpu_tools_write_outputs_copied_next_to_the_log_and_listed_in_junit(
        pytester: pytest.Pytester, zoo: Path, executor: str, request: pytest.FixtureRequest) -> None:
    if executor == "local" and not shutil.which("strace"):
        pytest.fail("strace is not installed (.ci/run installs it)")
    names = cpu_tools(executor)
    res = run(pytester, executor, request, {"tools": [{"name": n} for n in names]})
    res.assert_outcomes(passed=1)
    folder = zoo / "mad_logs/dummy_py_tools"
    expected = {"cpu_info_profiler_output.csv", "library_trace.csv"} | ({"strace_output.csv"} if "strace" in names else set())
    assert {p.name for p in folder.iterdir()} == expected
    props = properties(zoo)
    for name in expected:
        assert props[f"tool_output.{name}"] == str(folder / name)
    samples = rows(folder / "cpu_info_profiler_output.csv")
    assert samples and all(float(r["rss_mb"]) > 0 for r in samples)
    (trace,) = rows(folder / "library_trace.csv")  # the demo's three rocBLAS calls, one configuration
    assert (trace["library"], trace["calls"], trace["model"]) == ("rocblas", "3", "dummy_py")
    assert trace["config"].startswith("./rocblas-bench -f gemm")
    if "strace" in names:
        assert any(r["syscall"] == "execve" for r in rows(folder / "strace_output.csv"))
    log = (zoo / "mad_logs/dummy_py.log").read_text()
    assert "tools cpu_info_profiler, rocblas_trace, miopen_trace" in log  # the plan names them
    assert "rocblas-bench" not in log.split("performance:")[-1]  # counted into the CSV, not logged
    (row,) = rows(zoo / "perf.csv")
    assert row["status"] == "SUCCESS" and float(row["performance"]) > 0


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_failing_workload_keeps_its_exit_code_under_the_tools(
        pytester: pytest.Pytester, zoo: Path, executor: str, request: pytest.FixtureRequest) -> None:
    names = cpu_tools(executor)
    # each tool alone, then all stacked: argparse's exit code 2 for a bad --iters
    runs = [[n] for n in names] if executor == "local" else [names]
    for i, chosen in enumerate(runs):
        res = run(pytester, executor, request, {"tools": [{"name": n} for n in chosen], "model_args": "--iters x"})
        res.assert_outcomes(failed=1)
        res.stdout.fnmatch_lines(["*dummy_py: exit code 2*"])
        assert "invalid int value: 'x'" in (zoo / "mad_logs/dummy_py.log").read_text()
        table = rows(zoo / "perf.csv")  # one row per run, appended
        assert len(table) == i + 1 and table[-1]["status"] == "FAILURE"


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_gpu_tool_without_its_binary_fails_clearly_before_anything_runs(
        pytester: pytest.Pytester, zoo: Path, executor: str, request: pytest.FixtureRequest) -> None:
    if shutil.which("rocprofv3") and executor == "local":
        pytest.skip("this host has rocprofv3")
    (zoo / "scripts/common").mkdir(parents=True)
    (zoo / "scripts/common/pre.sh").write_text('echo "pre-script ran"\n')
    tools = ["rocprofv3", "strace"] if executor == "docker" else ["rocprofv3"]
    for name in tools:
        res = run(pytester, executor, request, {"tools": [{"name": "cpu_info_profiler"}, {"name": name}],
                                                "pre_scripts": [{"path": "scripts/common/pre.sh"}]})
        res.assert_outcomes(failed=1)
        where = "in the image" if executor == "docker" else "on this host (PATH)"
        res.stdout.fnmatch_lines([f"*dummy_py: tool '{name}': {name} not found {where}*"])
        log = (zoo / "mad_logs/dummy_py.log").read_text()
        assert "iterations in" not in log and "pre-script ran" not in log and f"needs {name}" in log  # neither the pre-script nor the script ran
        assert properties(zoo)["tool_missing"] == f"tool '{name}': {name} not found {where}"
        row = rows(zoo / "perf.csv")[-1]
        assert (row["status"], row["performance"]) == ("FAILURE", "")


@pytest.mark.parametrize("executor", EXECUTORS)
def test_encapsulate_script_and_tool_scripts_stack_in_madengines_order(
        pytester: pytest.Pytester, zoo: Path, executor: str, request: pytest.FixtureRequest) -> None:
    common = zoo / "scripts/common"
    common.mkdir(parents=True)
    (common / "ctx_pre.sh").write_text('echo "context pre $1"\n')
    (common / "ctx_post.sh").write_text('echo "context post"\n')
    (common / "encap.sh").write_text('echo "encapsulated: $*"\nshift 2\nexec "$@"\n')
    ctx = {"tools": [{"name": "test_tools_A"}, {"name": "test_tools_B"}],
           "encapsulate_script": "bash scripts/common/encap.sh --tag 'a b'",
           "pre_scripts": [{"path": "scripts/common/ctx_pre.sh", "args": "one"}],
           "post_scripts": [{"path": "scripts/common/ctx_post.sh"}]}
    res = run(pytester, executor, request, ctx)
    res.assert_outcomes(passed=1)
    log = (zoo / "mad_logs/dummy_py.log").read_text()
    order = ["pre_script B", "pre_script A", "context pre one", "cmd_B", "cmd_A",
             "encapsulated: --tag a b ", "dummy_py: 200000 iterations", "context post", "post_script A", "post_script B"]
    at = [log.find(f"\n{line}") for line in order]
    assert -1 not in at and at == sorted(at), list(zip(order, at))
    assert "script run by bash mad_tool_echo_cmd.sh cmd_B bash mad_tool_echo_cmd.sh cmd_A bash encap.sh" in log


def test_an_unknown_tool_fails_its_item_before_anything_runs(pytester: pytest.Pytester, zoo: Path,
                                                             request: pytest.FixtureRequest) -> None:
    res = run(pytester, "local", request, {"tools": [{"name": "cpu_info_profiler"}, {"name": "rocprof_v3"}]})
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*context key 'tools' entry 1: unknown tool 'rocprof_v3'; did you mean rocprofv3*"])
    assert not (zoo / "mad_work/dummy_py").exists()


@pytest.mark.slurm
def test_tools_run_inside_a_slurm_job_and_their_outputs_come_back(pytester: pytest.Pytester, zoo: Path) -> None:
    if shutil.which("sbatch") is None:
        unavailable("SLURM is not installed; run .ci/setup-slurm.sh")
    ctx = {"slurm_args": {"PARTITION": os.environ.get("MAD_TEST_SLURM_PARTITION", "debug"), "TIME": "2"},
           "tools": [{"name": "cpu_info_profiler"}, {"name": "rocblas_trace"}]}
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--mad-tags=dummy_py", "-o", "junit_family=xunit1",
                                        "--junitxml=junit.xml", f"--mad-context={json.dumps(ctx)}", timeout=180)
    res.assert_outcomes(passed=1)
    folder = zoo / "mad_logs/dummy_py_tools"
    assert {p.name for p in folder.iterdir()} == {"cpu_info_profiler_output.csv", "library_trace.csv"}
    (trace,) = rows(folder / "library_trace.csv")
    assert (trace["library"], trace["calls"]) == ("rocblas", "3")
    assert properties(zoo)["tool_output.library_trace.csv"] == str(folder / "library_trace.csv")
    ctx["tools"] = [{"name": "rocprofv3"}]
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--mad-tags=dummy_py",
                                        f"--mad-context={json.dumps(ctx)}", timeout=180)
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*dummy_py: tool 'rocprofv3': rocprofv3 not found on the compute node*"])


def test_a_context_file_never_replaces_a_file_of_the_run_folder(pytester: pytest.Pytester, zoo: Path,
                                                                request: pytest.FixtureRequest) -> None:
    res = run(pytester, "local", request, {"encapsulate_script": "python3 scripts/dummy_py/bench.py --iters 1"})
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*cannot prepare the run folder*(context key 'tools' or 'encapsulate_script') "
                              "would replace bench.py of the run folder*"])
