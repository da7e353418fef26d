"""Around the run: ``pre_scripts``/``post_scripts`` in the run folder, in order, where the script
runs (host or container), and ``model_args`` replacing every model's args."""

from __future__ import annotations

import csv
import json

import pytest

from .conftest import DOCKER_BASE, PERF_OK, ModelRepo

ARGS_ECHO = """
    #!/usr/bin/env bash
    echo "args: $*"
    cat pre.out 2>/dev/null || true
    echo "performance: 4 samples_per_second"
"""


def perf(pytester: pytest.Pytester) -> dict[str, dict[str, str]]:
    with open(pytester.path / "perf.csv", newline="") as fh:
        return {r["model"]: r for r in csv.DictReader(fh)}


def scripts(repo: ModelRepo) -> None:
    repo.script("common/pre.sh", 'echo "pre $1 in $(basename "$(pwd)")"; echo "from pre $1" > pre.out\n')
    repo.script("common/post.sh", 'echo "post sees $(cat pre.out)"; test "${1:-ok}" = ok\n')
    repo.script("common/badpre.sh", "echo 'pre fails'; exit 7\n")


@pytest.mark.parametrize("executor", ["local", "docker"])
def test_pre_and_post_scripts_run_in_the_run_folder_in_order(pytester: pytest.Pytester, repo: ModelRepo,
                                                             executor: str, request: pytest.FixtureRequest) -> None:
    ctx: dict[str, object] = {"pre_scripts": [{"path": "common/pre.sh", "args": "one"}],
                              "post_scripts": [{"path": "common/post.sh"}]}
    if executor == "docker":
        request.getfixturevalue("client")
        (pytester.path / "docker").mkdir(exist_ok=True)
        (pytester.path / "docker/test.Dockerfile").write_text("ARG BASE_DOCKER\nFROM ${BASE_DOCKER}\n")
        ctx["docker_build_arg"] = {"BASE_DOCKER": DOCKER_BASE}
    scripts(repo)
    repo.model("around", ARGS_ECHO)
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-tags=t", f"--mad-executor={executor}",
                             f"--mad-context={json.dumps(ctx)}")
    res.assert_outcomes(passed=1)
    log = (pytester.path / "mad_logs/around.log").read_text()
    assert log.index("pre one in around") < log.index("from pre one") < log.index("post sees from pre one"), log


def test_a_failing_pre_script_stops_the_model_and_a_failing_post_script_fails_it(
        pytester: pytest.Pytester, repo: ModelRepo) -> None:
    scripts(repo)
    repo.model("m", PERF_OK)
    pre = json.dumps({"pre_scripts": [{"path": "common/badpre.sh"}]})
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-tags=t", "--mad-executor=local", f"--mad-context={pre}")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*m: pre-script badpre.sh exited 7*"])
    assert "running m" not in (pytester.path / "mad_logs/m.log").read_text()  # the script never ran
    post = json.dumps({"post_scripts": [{"path": "common/post.sh", "args": "bad"}]})
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-tags=t", "--mad-executor=local", f"--mad-context={post}")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*m: post-script post.sh exited 1*"])
    row = perf(pytester)["m"]  # the value the script printed is kept, the row fails
    assert row["performance"] == "123.5" and row["status"] == "FAILURE"


def test_a_missing_pre_script_is_named(pytester: pytest.Pytester, repo: ModelRepo) -> None:
    repo.model("m", PERF_OK)
    ctx = json.dumps({"pre_scripts": [{"path": "common/nothere.sh"}]})
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-tags=t", "--mad-executor=local", f"--mad-context={ctx}")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*context key 'pre_scripts' entry 0: *nothere.sh is not a file*"])


def test_model_args_replace_every_models_args(pytester: pytest.Pytester, repo: ModelRepo) -> None:
    repo.model("a", ARGS_ECHO, args="--batch 8")
    repo.model("b", ARGS_ECHO, args="--batch 16")
    ctx = json.dumps({"model_args": "--batch 1 --dry"})
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-tags=t", "--mad-executor=local", f"--mad-context={ctx}")
    res.assert_outcomes(passed=2)
    for name in ("a", "b"):
        assert "args: --batch 1 --dry" in (pytester.path / f"mad_logs/{name}.log").read_text()
        assert perf(pytester)[name]["args"] == "--batch 1 --dry"


def test_skip_model_run_runs_everything_but_the_script(pytester: pytest.Pytester, repo: ModelRepo) -> None:
    scripts(repo)
    repo.model("m", PERF_OK)
    ctx = json.dumps({"pre_scripts": [{"path": "common/pre.sh", "args": "one"}]})
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-tags=t", "--mad-executor=local", "-rs",
                             "--mad-skip-model-run", f"--mad-context={ctx}")
    res.assert_outcomes(skipped=1)
    res.stdout.fnmatch_lines(["*model run skipped (--mad-skip-model-run)*"])
    log = (pytester.path / "mad_logs/m.log").read_text()
    assert "pre one in m" in log and "running m" not in log
    assert not (pytester.path / "perf.csv").exists()  # nothing measured, no row (as madengine)


@pytest.mark.parametrize("executor", ["local", "docker"])
def test_an_environment_snapshot_is_written_where_the_script_runs(pytester: pytest.Pytester, repo: ModelRepo,
                                                                  executor: str,
                                                                  request: pytest.FixtureRequest) -> None:
    ctx: dict[str, object] = {}
    if executor == "docker":
        request.getfixturevalue("client")
        (pytester.path / "docker").mkdir(exist_ok=True)
        (pytester.path / "docker/test.Dockerfile").write_text("ARG BASE_DOCKER\nFROM ${BASE_DOCKER}\n")
        ctx["docker_build_arg"] = {"BASE_DOCKER": DOCKER_BASE}
    repo.model("zoo/snap", PERF_OK, script="scripts/snap/run.sh")
    repo.model("nosnap", PERF_OK, gen_sys_env_details=False)
    res = pytester.runpytest("-p", "no:cacheprovider", "--mad-tags=t", f"--mad-executor={executor}",
                             "-o", "junit_family=xunit1", "--junitxml=junit.xml", f"--mad-context={json.dumps(ctx)}")
    res.assert_outcomes(passed=2)
    env_csv = pytester.path / "mad_work/zoo__snap/zoo_snap_env.csv"
    with open(env_csv, newline="") as fh:
        facts = dict(csv.reader(fh))
    assert facts["key"] == "value" and facts["kernel"] and int(facts["cpus"]) >= 1 and facts["os"]
    assert str(env_csv) in (pytester.path / "junit.xml").read_text()  # listed as a JUnit property
    assert not list((pytester.path / "mad_work/nosnap").glob("*_env.csv"))
    plan = (pytester.path / "mad_logs/zoo/snap.log").read_text()
    assert "around the script: environment snapshot to zoo_snap_env.csv" in plan
