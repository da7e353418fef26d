"""End-to-end: the plugin drives real processes with the local executor."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from junitparser import JUnitXml, Properties, Property

from .conftest import PERF_OK

LOCAL = ("--mad-executor=local", "-p", "no:cacheprovider")


def perf_rows(path: Path) -> list[dict]:
    with open(path / "perf.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def gone(pid: int) -> bool:
    """Not running: absent, or a zombie waiting for init to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def case_props(case) -> dict:
    return {p.name: p.value for props in case.iterchildren(Properties) for p in props.iterchildren(Property)}


def run(pytester, *args):
    return pytester.runpytest(*LOCAL, *args)


def test_pass_writes_log_perf_csv_and_junit(pytester, repo):
    repo.model("ok", PERF_OK, tags=["demo"], training_precision="fp16")
    res = run(pytester, "--mad-tags=demo", "--junitxml=junit.xml")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["*madengine: executor local*", "*ok*SUCCESS*123.5*samples_per_second*"])
    assert "performance: 123.5" in (pytester.path / "mad_logs" / "ok.log").read_text()
    (row,) = perf_rows(pytester.path)
    assert (row["model"], row["performance"], row["metric"], row["status"]) == ("ok", "123.5", "samples_per_second", "SUCCESS")
    assert row["training_precision"] == "fp16" and row["deployment_type"] == "local"
    xml = JUnitXml.fromfile(str(pytester.path / "junit.xml"))
    cases = [c for suite in xml for c in suite]
    assert [c.name for c in cases] == ["ok"]


def test_failure_reasons(pytester, repo):
    repo.model("exit3", "echo 'performance: 1 x'\necho boom\nexit 3\n")
    repo.model("noperf", "echo hello\n")
    repo.model("na", "echo 'performance: NA samples_per_second'\n")
    repo.model("missing", None, script="scripts/missing/run.sh")
    res = run(pytester, "--mad-tags=t")
    res.assert_outcomes(failed=4)
    out = res.stdout.str()
    assert "exit3: exit code 3" in out and "boom" in out  # reason, then the log tail
    assert "noperf: no performance line" in out
    assert "na: performance is not a number: 'NA' samples_per_second" in out
    assert "script not found" in out and "field 'scripts'" in out
    rows = {r["model"]: r for r in perf_rows(pytester.path)}
    assert {k: v["status"] for k, v in rows.items()} == {m: "FAILURE" for m in ("exit3", "noperf", "na", "missing")}
    assert rows["exit3"]["performance"] == ""  # a failed run never reports a number


def test_timeout_kills_the_whole_process_group(pytester, repo):
    repo.model("slow", """
        #!/usr/bin/env bash
        sleep 300 &
        echo $! > child.pid
        echo $$ > main.pid
        sleep 300
    """, timeout=1)
    start = time.monotonic()
    res = run(pytester, "--mad-tags=slow")
    assert time.monotonic() - start < 20
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*slow: timed out after 1 s*"])
    run_dir = pytester.path / "mad_work" / "slow"
    for name in ("child.pid", "main.pid"):
        pid = int((run_dir / name).read_text())
        assert gone(pid)
    (row,) = perf_rows(pytester.path)
    assert row["status"] == "FAILURE"


def test_cli_timeout_overrides_model_timeout(pytester, repo):
    repo.model("slow", "sleep 30\n", timeout=600)
    res = run(pytester, "--mad-tags=slow", "--mad-timeout=1")
    res.stdout.fnmatch_lines(["*timed out after 1 s*"])


def test_args_with_shell_metacharacters_stay_literal(pytester, repo, tmp_path):
    marker = tmp_path / "pwned"
    repo.model("meta", """
        #!/usr/bin/env bash
        for a in "$@"; do echo "arg=[$a]"; done
        echo "performance: 1 x"
    """, args=f"; touch {marker} $(touch {marker}) '&&' `touch {marker}`")
    res = run(pytester, "--mad-tags=meta")
    res.assert_outcomes(passed=1)
    log = (pytester.path / "mad_logs" / "meta.log").read_text()
    assert "arg=[;]" in log and "arg=[$(touch]" in log and "arg=[&&]" in log
    assert not marker.exists()


def test_tag_args_are_appended(pytester, repo):
    repo.model("argy", """
        #!/usr/bin/env bash
        echo "argv: $*"
        echo "performance: 1 x"
    """, args="--base 1")
    run(pytester, "--mad-tags=argy:batch=16:lr=0.1").assert_outcomes(passed=1)
    assert "argv: --base 1 --batch 16 --lr 0.1" in (pytester.path / "mad_logs" / "argy.log").read_text()


def test_environment_reaches_the_script(pytester, repo):
    repo.model("envy", """
        #!/usr/bin/env bash
        env | grep -E '^(MAD_|FROM_|BOTH)' | sort
        echo "performance: 1 x"
    """, env_vars={"FROM_MODEL": "m", "BOTH": "model"}, multiple_results="")
    res = run(pytester, "--mad-tags=envy", "--mad-context", "{'docker_env_vars': {'FROM_CTX': 'c', 'BOTH': 'ctx'}}")
    res.assert_outcomes(passed=1)
    log = (pytester.path / "mad_logs" / "envy.log").read_text()
    for line in ("FROM_MODEL=m", "FROM_CTX=c", "BOTH=ctx", "MAD_MODEL_NAME=envy", "MAD_RUNTIME_NGPUS=0",
                 "MAD_MULTI_NODE_RUNNER=torchrun --standalone --nproc_per_node=1", "MAD_GPU_VENDOR=NONE"):
        assert line in log


def test_selection_deselects_and_markers_work(pytester, repo):
    repo.model("a", PERF_OK, tags=["fast", "nlp"])
    repo.model("b", PERF_OK, tags=["slow"])
    repo.model("c", PERF_OK, tags=["fast"])
    res = run(pytester, "--mad-tags=fast,b")  # a model chosen twice runs once
    res.assert_outcomes(passed=3)
    res = run(pytester, "--mad-tags=fast")
    res.assert_outcomes(passed=2, deselected=1)
    res = run(pytester, "--mad-tags=all", "-m", "nlp")
    res.assert_outcomes(passed=1, deselected=2)
    res = run(pytester, "--mad-tags=all", "-k", "not c")
    res.assert_outcomes(passed=2, deselected=1)


def test_unknown_tag_is_a_usage_error_with_suggestions(pytester, repo):
    repo.model("dummy", PERF_OK, tags=["dummies"])
    res = run(pytester, "--mad-tags=dumy")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*'dumy'*closest*dummy*"])


def test_malformed_context_is_a_usage_error(pytester, repo):
    repo.model("dummy", PERF_OK)
    res = run(pytester, "--mad-tags=dummy", "--mad-context", "{'a': __import__('os')}")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*--mad-context*not a JSON object or Python dict literal*"])
    res = run(pytester, "--mad-tags=dummy", "--mad-context", "{'docker_env_vars': [1]}")
    res.stderr.fnmatch_lines(["*'docker_env_vars' must be a dict*"])


def test_context_files_merge_in_order_and_unknown_keys_warn(pytester, repo):
    repo.model("envy", 'echo "X=$X Y=$Y"\necho "performance: 1 x"\n')
    (pytester.path / "a.yaml").write_text("docker_env_vars:\n  X: from-yaml\n  Y: from-yaml\n")
    res = run(pytester, "--mad-tags=envy", "--mad-context-file=a.yaml",
              "--mad-context", '{"docker_env_vars": {"Y": "from-cli"}, "gpu_vendr": "AMD"}')
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["*unknown context key 'gpu_vendr'; did you mean 'gpu_vendor'*"])
    assert "X=from-yaml Y=from-cli" in (pytester.path / "mad_logs" / "envy.log").read_text()


def test_broken_entries_fail_alone(pytester, repo):
    repo.model("good", PERF_OK)
    repo.entries.append({"name": "nodocker", "scripts": "x.sh", "tags": ["t"]})
    repo.entries.append({"name": "badgpus", "dockerfile": "d", "scripts": "x.sh", "n_gpus": "two", "tags": ["t"]})
    repo.write()
    res = run(pytester, "--mad-tags=t")
    res.assert_outcomes(passed=1, failed=2)
    res.stdout.fnmatch_lines(["*dockerfile*", "*n_gpus*"])


def test_invalid_json_names_line_and_column_and_other_files_still_run(pytester, repo):
    repo.model("good", PERF_OK)
    bad = pytester.path / "scripts" / "zoo" / "models.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('[\n  {"name": "x",\n   "scripts": "run.sh" "dockerfile": "d"}\n]\n')
    res = run(pytester, "--mad-tags=good")
    res.assert_outcomes(passed=1, failed=1)
    res.stdout.fnmatch_lines(["*invalid JSON at line 3, column*"])


def test_multiple_results_missing_column(pytester, repo):
    repo.model("multi", """
        #!/usr/bin/env bash
        printf 'model,perf,metric\\na,1,x\\n' > out.csv
    """, multiple_results="out.csv")
    res = run(pytester, "--mad-tags=multi")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*out.csv*missing*performance*"])


def test_multiple_results_rows_named_after_model(pytester, repo):
    repo.model("multi", """
        #!/usr/bin/env bash
        printf 'model, performance, metric\\nbs1, 10, samples_per_second\\nbs2, 20.5, samples_per_second\\n' > "$MAD_OUTPUT_CSV"
    """, multiple_results="out.csv")
    res = run(pytester, "--mad-tags=multi", "--junitxml=j.xml", "-o", "junit_family=xunit1")
    res.assert_outcomes(passed=1)
    rows = perf_rows(pytester.path)
    assert [(r["model"], r["performance"]) for r in rows] == [("multi_bs1", "10"), ("multi_bs2", "20.5")]
    xml = JUnitXml.fromfile(str(pytester.path / "j.xml"))
    (case,) = [c for s in xml for c in s]
    props = case_props(case)
    assert props["performance:multi_bs2"] == "20.5" and props["metric:multi_bs1"] == "samples_per_second"


def test_stale_results_from_an_earlier_run_are_not_read(pytester, repo):
    repo.model("multi", "#!/usr/bin/env bash\n[ -n \"$WRITE\" ] && printf 'model,performance,metric\\na,1,x\\n' > out.csv; true\n",
               multiple_results="out.csv")
    os.environ["WRITE"] = "1"
    try:
        run(pytester, "--mad-tags=multi").assert_outcomes(passed=1)
    finally:
        del os.environ["WRITE"]
    res = run(pytester, "--mad-tags=multi")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*not written*"])


def test_skip_gpu_arch(pytester, repo):
    repo.model("skippy", PERF_OK, skip_gpu_arch="gfx90a,gfx942")
    ctx = "{'MAD_SYSTEM_GPU_ARCHITECTURE': 'gfx942'}"
    res = run(pytester, "--mad-tags=skippy", "--mad-context", ctx, "-rs")
    res.assert_outcomes(skipped=1)
    res.stdout.fnmatch_lines(["*skip_gpu_arch*gfx942*"])
    assert perf_rows(pytester.path)[0]["status"] == "SKIPPED"
    run(pytester, "--mad-tags=skippy", "--mad-context", ctx, "--mad-disable-skip-gpu-arch").assert_outcomes(passed=1)


@pytest.mark.parametrize("family", ["xunit1", "xunit2"])
def test_junit_forms_validate_and_load(pytester, repo, family):
    repo.model("ok", PERF_OK)
    repo.model("bad", "exit 2\n")
    res = run(pytester, "--mad-tags=t", "--junitxml=j.xml", "-o", f"junit_family={family}")
    res.assert_outcomes(passed=1, failed=1)
    path = pytester.path / "j.xml"
    xml = JUnitXml.fromfile(str(path))
    cases = {c.name: c for s in xml for c in s}
    assert set(cases) == {"ok", "bad"}
    if family == "xunit1":
        props = case_props(cases["ok"])
        assert props["performance"] == "123.5" and props["metric"] == "samples_per_second"
        assert {"model", "status", "tags", "n_gpus", "executor", "log"} <= set(props)
    else:
        suite = next(iter(xml))
        props = {p.name: p.value for p in suite.properties()}
        assert props["models.json::ok::performance"] == "123.5"
        assert props["models.json::bad::status"] == "FAILURE"
        assert "[pytest-madengine metrics]" in path.read_text()
        if shutil.which("xmllint") or os.environ.get("CI") == "true":
            xsd = Path(__file__).resolve().parents[1] / "data" / "jenkins-junit.xsd"  # Jenkins' junit-4 schema
            done = subprocess.run(["xmllint", "--noout", "--schema", str(xsd), str(path)],
                                  capture_output=True, text=True)
            assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("family", ["xunit1", "xunit2"])
def test_xdist_keeps_every_result(pytester, repo, family):
    for i in range(4):
        repo.model(f"m{i}", PERF_OK)
    res = run(pytester, "--mad-tags=t", "-n", "2", "--junitxml=j.xml", "-o", f"junit_family={family}")
    res.assert_outcomes(passed=4)
    assert sorted(r["model"] for r in perf_rows(pytester.path)) == ["m0", "m1", "m2", "m3"]
    text = (pytester.path / "j.xml").read_text()
    for i in range(4):
        assert f'value="m{i}"' in text


def test_live_output(pytester, repo):
    repo.model("chatty", 'echo "hello from the model"\necho "performance: 1 x"\n')
    res = run(pytester, "--mad-tags=chatty", "--mad-live-output")
    res.stdout.fnmatch_lines(["*hello from the model*"])


def test_huge_output_keeps_memory_bounded(pytester, repo):
    # 50 MB with no newline, then many lines: the long line cut in the log, the rest complete, still parsed
    repo.model("big", """
        #!/usr/bin/env bash
        head -c 50000000 /dev/zero | tr '\\0' 'x'
        echo
        seq 1 200000
        echo "performance: 7 x"
    """)
    res = run(pytester, "--mad-tags=big")
    res.assert_outcomes(passed=1)
    log = pytester.path / "mad_logs" / "big.log"
    assert 1_000_000 < log.stat().st_size < 5_000_000
    text = log.read_text()
    assert "the line above is cut at 1048576 bytes" in text and "\n200000\nperformance: 7 x" in text


def test_ctrl_c_still_reports_every_model(pytester, repo):
    repo.model("first", """
        #!/usr/bin/env bash
        sleep 60 &
        echo $! > sleep.pid
        touch started
        wait
    """)
    repo.model("second", PERF_OK)
    repo.model("third", PERF_OK)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *LOCAL, "--mad-tags=t", "--junitxml=j.xml"],
                            cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started = pytester.path / "mad_work" / "first" / "started"
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert started.exists()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert "first: interrupted" in out and "not run: the session was interrupted" in out
    rows = perf_rows(pytester.path)
    assert sorted(r["model"] for r in rows) == ["first", "second", "third"]
    assert {r["status"] for r in rows} == {"FAILURE"}
    assert (pytester.path / "j.xml").read_text().count("<testcase") == 3
    pid = int((pytester.path / "mad_work" / "first" / "sleep.pid").read_text())
    assert gone(pid)


def test_auto_executor_says_why(pytester, repo, monkeypatch):
    repo.model("ok", PERF_OK)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    res = pytester.runpytest("--mad-tags=ok", "-p", "no:cacheprovider")
    res.stdout.fnmatch_lines(["*executor local (auto: no Docker daemon*"])
    res.assert_outcomes(passed=1)


def test_mad_models_option_and_scoped_files(pytester, repo):
    other = pytester.path / "elsewhere" / "models.json"
    other.parent.mkdir()
    (other.parent / "run.sh").write_text(PERF_OK)
    other.write_text(json.dumps([{"name": "far", "dockerfile": "d", "scripts": "run.sh", "tags": ["x"]}]))
    zoo = pytester.path / "scripts" / "zoo"
    zoo.mkdir(parents=True)
    (zoo / "run.sh").write_text(PERF_OK)
    (zoo / "models.json").write_text(json.dumps([{"name": "near", "dockerfile": "d", "scripts": "run.sh", "tags": ["x"]}]))
    res = run(pytester, "--mad-models=elsewhere/models.json", "--mad-tags=x", "-v")
    res.assert_outcomes(passed=2)
    res.stdout.fnmatch_lines(["*models.json::zoo/near PASSED*"])
    res = run(pytester, "--mad-models=elsewhere/models.json", "--mad-tags=zoo/x")
    res.assert_outcomes(passed=1, deselected=1)


def test_results_file_left_in_the_script_folder_is_not_read(pytester, repo):
    # A developer ran run.sh by hand and left its CSV behind; this run writes nothing.
    repo.model("multi", "#!/usr/bin/env bash\ntrue\n", multiple_results="out.csv")
    (pytester.path / "scripts" / "multi" / "out.csv").write_text("model,performance,metric\na,99999,x\n")
    res = run(pytester, "--mad-tags=multi")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*out.csv*not written*"])
    assert "99999" not in (pytester.path / "perf.csv").read_text()


def test_script_at_the_checkout_root_runs_again_and_again(pytester, repo):
    repo.model("rooty", PERF_OK, script="rooty.sh")
    for _ in range(2):
        run(pytester, "--mad-tags=rooty").assert_outcomes(passed=1)
    assert not (pytester.path / "mad_work" / "rooty" / "mad_work").exists()


def test_a_failing_result_hook_never_leaves_a_success_row(pytester, repo):
    repo.model("ok", PERF_OK)
    pytester.makeconftest("def pytest_mad_result(item, result):\n    raise RuntimeError('upload failed')\n")
    res = run(pytester, "--mad-tags=ok")
    res.assert_outcomes(failed=1)
    (row,) = perf_rows(pytester.path)
    assert row["status"] == "FAILURE"


def test_stopping_early_still_reports_every_selected_model(pytester, repo):
    repo.model("bad", "exit 1\n")
    repo.model("later", PERF_OK)
    res = run(pytester, "--mad-tags=t", "-x", "--junitxml=j.xml")
    res.assert_outcomes(failed=2)
    rows = {r["model"]: r["status"] for r in perf_rows(pytester.path)}
    assert rows == {"bad": "FAILURE", "later": "FAILURE"}
    assert (pytester.path / "j.xml").read_text().count("<testcase") == 2


def test_sigterm_to_an_xdist_run_still_reports_every_model(pytester, repo):
    for i in range(4):
        repo.model(f"m{i}", "#!/usr/bin/env bash\ntouch started\nsleep 60 &\necho $! > sleep.pid\nwait\n")
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *LOCAL, "--mad-tags=t", "-n", "2", "--junitxml=j.xml"],
                            cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((pytester.path / "mad_work").glob("*/started"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # to the controller only, as a CI abort does
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode != 0
    rows = perf_rows(pytester.path)
    assert sorted(r["model"] for r in rows) == ["m0", "m1", "m2", "m3"], out
    assert {r["status"] for r in rows} == {"FAILURE"}
    assert (pytester.path / "j.xml").read_text().count("<testcase") == 4


def test_ctrl_c_while_waiting_for_gpus(pytester, repo):
    repo.model("holder", "#!/usr/bin/env bash\ntouch started\nsleep 60 &\nwait\n", n_gpus="1")
    repo.model("waiter", PERF_OK, n_gpus="1")
    # Two pytest processes share the virtual pool "0": the second waits for the first's GPU.
    first = subprocess.Popen([sys.executable, "-m", "pytest", *LOCAL, "--mad-tags=holder", "--mad-gpus=0",
                              "--mad-perf-csv=p1.csv"], cwd=pytester.path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    started = pytester.path / "mad_work" / "holder" / "started"
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    second = subprocess.Popen([sys.executable, "-m", "pytest", *LOCAL, "--mad-tags=waiter", "--mad-gpus=0",
                               "--mad-perf-csv=p2.csv", "--junitxml=j.xml"], cwd=pytester.path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = pytester.path / "mad_logs" / "waiter.log"
    while time.monotonic() < deadline and not (log.exists() and "waiting for 1 GPUs" in log.read_text()):
        time.sleep(0.1)
    second.send_signal(signal.SIGINT)
    out, _ = second.communicate(timeout=60)
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=60)
    assert "waiter: interrupted" in out, out
    (row,) = list(csv.DictReader(open(pytester.path / "p2.csv")))
    assert (row["model"], row["status"]) == ("waiter", "FAILURE")


def test_context_keys_without_effect_warn_and_bad_timeout_is_refused(pytester, repo):
    repo.model("ok", PERF_OK)
    res = run(pytester, "--mad-tags=ok", "--mad-context", "{'debug': True}")
    res.stdout.fnmatch_lines(["*'debug' is accepted for madengine compatibility but has no effect*"])
    res = run(pytester, "--mad-tags=ok", "--mad-timeout=-5")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
