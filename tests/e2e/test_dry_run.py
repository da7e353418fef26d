"""``--mad-dry-run`` prints the plan a real run executes and runs nothing, on every backend;
and a plugin can add a backend through ``pytest_mad_make_executor``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .conftest import DOCKER_BASE, PERF_OK, ModelRepo

SLURM_PARTITION = os.environ.get("MAD_TEST_SLURM_PARTITION", "debug")


def plan_block(text: str, model: str) -> list[str]:
    """The rendered plan of ``model`` in a dry run's output or at the top of its log."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.removeprefix("[pytest-madengine] ").startswith(
        f"plan for {model} ("))
    block = [lines[start].removeprefix("[pytest-madengine] ")]
    for ln in lines[start + 1:]:
        if not ln.startswith("  "):
            break
        block.append(ln)
    return block


def nothing_written(path: Path) -> None:
    assert not (path / "perf.csv").exists()
    assert not (path / "mad_work").exists() and not (path / "mad_logs").exists()


@pytest.mark.parametrize("extra", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_local_dry_run_prints_the_plan_a_real_run_executes(pytester: pytest.Pytester, repo: ModelRepo,
                                                           extra: list[str]) -> None:
    repo.model("m", PERF_OK, args="--batch 8", env_vars={"API_TOKEN": "canary-123"})
    repo.model("other", PERF_OK)
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--mad-tags=t", "--mad-executor=local",
                                        "--mad-dry-run", "-s", *extra)
    res.assert_outcomes(skipped=2)
    out = res.stdout.str()
    nothing_written(pytester.path)
    dry = plan_block(out, "m")
    assert "  run: bash run.sh --batch 8" in dry and "canary-123" not in out  # secrets masked
    real = pytester.runpytest("-p", "no:cacheprovider", "--mad-tags=m", "--mad-executor=local")
    real.assert_outcomes(passed=1)
    assert plan_block((pytester.path / "mad_logs/m.log").read_text(), "m") == dry


def test_docker_dry_run_builds_and_starts_nothing(pytester: pytest.Pytester, repo: ModelRepo, client) -> None:
    (pytester.path / "docker").mkdir()
    (pytester.path / "docker/test.ubuntu.any.Dockerfile").write_text(
        "# CONTEXT {'guest_os': 'UBUNTU'}\nARG BASE_DOCKER\nFROM ${BASE_DOCKER}\nRUN echo dry-run-only\n")
    name = f"dryrun_{os.getpid()}"
    repo.model(name, PERF_OK, additional_docker_run_options="-e HF_TOKEN=canary-456 --shm-size 1g")
    ctx = json.dumps({"docker_build_arg": {"BASE_DOCKER": DOCKER_BASE}})
    before = {c.id for c in client.containers.list(all=True, ignore_removed=True)}
    res = pytester.runpytest("-p", "no:cacheprovider", f"--mad-tags={name}", "--mad-executor=docker",
                             f"--mad-context={ctx}", "--mad-dry-run", "-s")
    res.assert_outcomes(skipped=1)
    out = res.stdout.str()
    block = "\n".join(plan_block(out, name))
    assert f"image: ci-{name}_test.ubuntu.any" in block and f"container: container_ci-{name}_test.ubuntu.any" in block
    assert "working dir: /myworkspace/mad_work/" in block and "canary-456" not in out
    nothing_written(pytester.path)
    assert {c.id for c in client.containers.list(all=True, ignore_removed=True)} == before
    assert not client.images.list(name=f"ci-{name}_test.ubuntu.any")


def test_multi_node_dry_run_shows_the_runner_and_meets_nobody(pytester: pytest.Pytester, repo: ModelRepo) -> None:
    repo.model("mn", PERF_OK)
    ctx = {"multi_node_args": {"RUNNER": "torchrun", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.9.9.9",
                               "MASTER_PORT": "29599"}}
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-tags=mn", "--mad-executor=local",
                             f"--mad-context={json.dumps(ctx)}", "--mad-dry-run", "-s")
    res.assert_outcomes(skipped=1)
    block = "\n".join(plan_block(res.stdout.str(), "mn"))
    assert "multi-node: node 1 of 2, rendezvous 10.9.9.9:29599, runner torchrun" in block
    nothing_written(pytester.path)


@pytest.mark.slurm
def test_slurm_dry_run_prints_the_batch_script_and_queues_nothing(pytester: pytest.Pytester, repo: ModelRepo) -> None:
    try:
        subprocess.run(["sinfo", "-h"], check=True, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        from .multinode_helpers import unavailable

        unavailable(f"no SLURM cluster answers ({exc}); run .ci/setup-slurm.sh")
    repo.model("sl", PERF_OK)
    ctx = repr({"slurm_args": {"PARTITION": SLURM_PARTITION, "TIME": "2", "NODES": 2}})
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-tags=sl", f"--mad-context={ctx}", "--mad-dry-run",
                             "-s")
    res.assert_outcomes(skipped=1)
    block = "\n".join(plan_block(res.stdout.str(), "sl"))
    assert "native: sbatch --parsable" in block and "#SBATCH --nodes=2" in block
    assert "--- task script (run on every node) ---" in block
    assert not (pytester.path / "perf.csv").exists()
    queued = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True, timeout=20).stdout
    assert "sl" not in queued.split()


def test_a_plugin_adds_a_backend(pytester: pytest.Pytester, repo: ModelRepo) -> None:
    repo.model("viaplugin", PERF_OK)
    pytester.makeconftest('''
        from dataclasses import dataclass

        from pytest_madengine.executors.base import ExecutorChoice, Plan, RunOutcome
        from pytest_madengine.executors.local import LocalExecutor


        class Echo(LocalExecutor):
            name = "echo"

            def run(self, plan, sink, cancel):
                sink.write("performance: 7 echoes_per_second")
                return RunOutcome(0, 0.1)


        def pytest_mad_make_executor(config, name, context, options, run_id):
            if name == "echo":
                return ExecutorChoice(Echo(), "the echo plugin")
    ''')
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-tags=viaplugin", "--mad-executor=echo")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["*madengine: executor echo (the echo plugin)*"])
    bad = pytester.runpytest("-p", "no:cacheprovider", "--mad-tags=viaplugin", "--mad-executor=nosuch")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "no backend named 'nosuch'; built in: auto, docker, local, slurm" in bad.stderr.str()
