"""End-to-end: parallel runs on a virtual GPU pool, merge, baselines and summaries (local executor)."""

from __future__ import annotations

import csv
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from junitparser import JUnitXml, Properties, Property

from pytest_madengine import cli

LOCAL = ("--mad-executor=local", "-p", "no:cacheprovider")
REPO_ROOT = Path(__file__).resolve().parents[2]

# Records which GPU ids the model held, and when, into $RECORD (O_APPEND: lines never tear).
RECORDING = """
    #!/usr/bin/env bash
    start=$(date +%s.%N)
    sleep "${HOLD:-0.5}"
    echo "$MAD_MODEL_NAME ${MAD_GPU_IDS:-none} $start $(date +%s.%N)" >> "$RECORD"
    echo "performance: 1 samples_per_second"
"""


def run(pytester, *args):
    return pytester.runpytest(*LOCAL, *args)


def perf_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def records(path: Path) -> dict[str, tuple[set[int], float, float]]:
    out = {}
    for line in path.read_text().splitlines():
        name, ids, start, end = line.split()
        assert name not in out, f"{name} ran twice"
        out[name] = ({int(i) for i in ids.split(",")} if ids != "none" else set(), float(start), float(end))
    return out


def assert_no_shared_gpu(recs: dict[str, tuple[set[int], float, float]]) -> None:
    for (a, (ids_a, s_a, e_a)), (b, (ids_b, s_b, e_b)) in itertools.combinations(recs.items(), 2):
        if s_a < e_b and s_b < e_a:  # ran at the same time
            assert not ids_a & ids_b, f"{a} {sorted(ids_a)} and {b} {sorted(ids_b)} overlapped on the same GPU"


def case_props(case) -> dict:
    return {p.name: p.value for props in case.iterchildren(Properties) for p in props.iterchildren(Property)}


# ----------------------------------------------------------------------------- scheduling

def test_xdist_on_a_virtual_pool_never_shares_a_gpu(pytester, repo):
    record = pytester.path / "record.txt"
    demands = {"one_a": 1, "one_b": 1, "one_c": 1, "one_d": 1, "two_a": 2, "two_b": 2, "four": 4, "whole": -1}
    for name, n in demands.items():
        repo.model(name, RECORDING, n_gpus=n, env_vars={"RECORD": str(record), "HOLD": "0.6"})
    res = run(pytester, "--mad-tags=t", "-n", "4", "--mad-gpus=0-3", "--junitxml=j.xml")
    res.assert_outcomes(passed=len(demands))
    recs = records(record)
    assert set(recs) == set(demands)  # every model ran, once
    for name, n in demands.items():
        assert len(recs[name][0]) == (4 if n < 0 else n), (name, recs[name])
        assert recs[name][0] <= {0, 1, 2, 3}
    assert_no_shared_gpu(recs)
    rows = {r["model"]: r for r in perf_rows(pytester.path / "perf.csv")}
    assert rows["two_a"]["n_gpus"] == "2" and rows["whole"]["n_gpus"] == "4"


def test_largest_first_order_only_with_a_pool(pytester, repo):
    for name, n in (("small", 1), ("big", 4), ("mid", 2), ("small2", 1), ("all", -1)):
        repo.model(name, RECORDING, n_gpus=n)
    res = run(pytester, "--mad-tags=t", "--collect-only", "-q", "--mad-gpus=0-7")
    names = [line.split("::")[1] for line in res.outlines if line.startswith("models.json::")]
    assert names == ["all", "big", "mid", "small", "small2"]
    res = run(pytester, "--mad-tags=t", "--collect-only", "-q", "--mad-gpus=none")
    names = [line.split("::")[1] for line in res.outlines if line.startswith("models.json::")]
    assert names == ["small", "big", "mid", "small2", "all"]


def test_waiting_model_notes_progress_and_too_big_fails_at_once(pytester, repo):
    record = pytester.path / "record.txt"
    for name in ("first", "second"):
        repo.model(name, RECORDING, n_gpus=2, env_vars={"RECORD": str(record), "HOLD": "3"})
    repo.model("huge", RECORDING, n_gpus=3, env_vars={"RECORD": str(record)})
    res = run(pytester, "--mad-tags=t", "-n", "2", "--mad-gpus=0-1", "--junitxml=j.xml", "-o", "junit_family=xunit1")
    res.assert_outcomes(passed=2, failed=1)
    res.stdout.fnmatch_lines(["*huge needs 3 GPUs but the pool has 2 ([[]0, 1[]])*"])
    recs = records(record)
    assert set(recs) == {"first", "second"}
    assert_no_shared_gpu(recs)
    logs = [(pytester.path / "mad_logs" / f"{n}.log").read_text() for n in ("first", "second")]
    assert any("[pytest-madengine] waiting for 2 GPUs of pool [0, 1]" in text for text in logs), logs
    cases = {c.name: c for s in JUnitXml.fromfile(str(pytester.path / "j.xml")) for c in s}
    assert any(float(case_props(cases[n]).get("gpu_wait_s", 0)) > 1 for n in ("first", "second"))


KILLER = """
    #!/usr/bin/env bash
    # Kill the pytest (xdist worker) process that runs this script, as an OOM killer would.
    pid=$PPID
    while [ "$pid" -gt 1 ] && ! tr '\\0' ' ' < /proc/$pid/cmdline | grep -q python; do
        pid=$(ps -o ppid= -p "$pid" | tr -d ' ')
    done
    echo "killer $MAD_GPU_IDS $(date +%s.%N) $(date +%s.%N)" >> "$RECORD"
    kill -9 "$pid"
    exit 0
"""


def test_worker_killed_mid_run_returns_its_gpus(pytester, repo):
    record = pytester.path / "record.txt"
    repo.model("killer", KILLER, n_gpus=2, env_vars={"RECORD": str(record)})
    repo.model("small1", RECORDING, n_gpus=1, env_vars={"RECORD": str(record)})
    repo.model("small2", RECORDING, n_gpus=1, env_vars={"RECORD": str(record)})
    # A subprocess with a time limit: leaked GPU leases would make the others wait forever.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "pytest", *LOCAL, "--mad-tags=t", "-n", "2", "--mad-gpus=0-1",
                           "--junitxml=j.xml"], cwd=pytester.path, env=env, capture_output=True, text=True,
                          timeout=180)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "crashed" in out and "killer" in out, out
    recs = records(record)
    assert set(recs) == {"killer", "small1", "small2"}, out
    killed_at = recs["killer"][1]
    # small2 was queued behind the killer on the same worker, so it ran after the kill,
    # on GPUs that only the dead worker's leases could have blocked.
    assert recs["small2"][1] > killed_at
    rows = {r["model"]: r for r in perf_rows(pytester.path / "perf.csv")}
    assert rows["killer"]["status"] == "FAILURE" and rows["killer"]["performance"] == ""
    assert rows["small1"]["status"] == rows["small2"]["status"] == "SUCCESS"
    cases = {c.name: c for s in JUnitXml.fromfile(str(pytester.path / "j.xml")) for c in s}
    assert set(cases) == {"killer", "small1", "small2"}
    assert not cases["killer"].is_passed and cases["small2"].is_passed


# ----------------------------------------------------------------------------- merge

def test_merge_both_junit_forms_and_rebuild_perf_csv(pytester, repo):
    repo.model("alpha", "echo 'performance: 10.5 samples_per_second'\n", args="--bs 8", training_precision="fp16")
    repo.model("multi", """
        printf 'model,performance,metric\\nbs1,10,samples_per_second\\nbs2,20.5,samples_per_second\\n' > "$MAD_OUTPUT_CSV"
    """, multiple_results="out.csv")
    repo.model("broken", "exit 3\n")
    run(pytester, "--mad-tags=alpha,multi", "--junitxml=a.xml", "-o", "junit_family=xunit1",
        "--mad-perf-csv=a.csv").assert_outcomes(passed=2)
    run(pytester, "--mad-tags=broken,alpha", "-n", "2", "--junitxml=b.xml", "-o", "junit_family=xunit2",
        "--mad-perf-csv=b.csv").assert_outcomes(passed=1, failed=1)
    p = pytester.path
    assert cli.main(["merge", "-o", str(p / "m.xml"), "--perf-csv", str(p / "m.csv"),
                     str(p / "a.xml"), str(p / "b.xml")]) == 0
    cases = [(c.name, c.is_passed) for s in JUnitXml.fromfile(str(p / "m.xml")) for c in s]
    assert sorted(cases) == [("alpha", True), ("alpha", True), ("broken", False), ("multi", True)]
    key = lambda r: (r["model"], r["test_duration"])  # noqa: E731
    original = sorted(perf_rows(p / "a.csv") + perf_rows(p / "b.csv"), key=key)
    rebuilt = sorted(perf_rows(p / "m.csv"), key=key)
    assert rebuilt == original  # every madengine column, as the runs wrote them
    # merging a merged file with another gives the same results again
    assert cli.main(["merge", "--perf-csv", str(p / "m2.csv"), str(p / "m.xml")]) == 0
    assert sorted(perf_rows(p / "m2.csv"), key=key) == original


def test_merge_reports_unreadable_files(pytester, capsys):
    p = pytester.path
    (p / "bad.xml").write_text("<testsuites><testsuite>")
    (p / "html.xml").write_text("<html></html>")
    assert cli.main(["merge", "-o", str(p / "m.xml"), str(p / "bad.xml")]) == 2
    assert "bad.xml: not well-formed XML" in capsys.readouterr().err
    assert cli.main(["merge", "-o", str(p / "m.xml"), str(p / "html.xml")]) == 2
    assert "html.xml: not a JUnit file" in capsys.readouterr().err
    assert cli.main(["merge", "-o", str(p / "m.xml"), str(p / "nope.xml")]) == 2
    assert "nope.xml: no such file" in capsys.readouterr().err
    assert not (p / "m.xml").exists()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-m", "pytest_madengine.cli", "merge", "nope.xml"], cwd=p, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "give -o MERGED.xml, --perf-csv OUT, or both" in done.stderr


# ----------------------------------------------------------------------------- baselines

BASELINE_CSV = ("model,performance,metric,status\n"
                "tput,500,samples_per_second,SUCCESS\n"
                "tput,1000,samples_per_second,SUCCESS\n"   # the last row of a name counts
                "lat,10,ms,SUCCESS\n"
                "lat,1,ms,FAILURE\n")                      # a failed row is never a baseline


def perf_models(repo):
    repo.model("tput", 'echo "performance: ${TPUT:-1000} samples_per_second"\n')
    repo.model("lat", 'echo "performance: ${LAT:-10} ms"\n')
    repo.model("newbie", 'echo "performance: 3 samples_per_second"\n')


def values(tput: str, lat: str) -> tuple[str, str]:
    return "--mad-context", f"{{'docker_env_vars': {{'TPUT': '{tput}', 'LAT': '{lat}'}}}}"


def test_better_or_within_threshold_passes(pytester, repo, monkeypatch):
    perf_models(repo)
    (pytester.path / "base.csv").write_text(BASELINE_CSV)
    step = pytester.path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    res = run(pytester, "--mad-tags=t", "--mad-baseline=base.csv", *values("1100", "10.4"),
              "--mad-summary=out/summary.md", "--junitxml=j.xml", "-o", "junit_family=xunit1")
    res.assert_outcomes(passed=3)
    res.stdout.fnmatch_lines(["*baseline*base.csv (2 entries), regression threshold 5%*",
                              "*tput*SUCCESS*1100*samples_per_second*+10.0%*",
                              "*lat*SUCCESS*10.4*ms*+4.0%*",
                              "*newbie*SUCCESS*3*samples_per_second*no baseline*"])
    rows = {r["model"]: r for r in perf_rows(pytester.path / "perf.csv")}
    assert rows["tput"]["relative_change"] == "10.00" and rows["lat"]["relative_change"] == "4.00"
    assert rows["newbie"]["relative_change"] == ""
    cases = {c.name: case_props(c) for s in JUnitXml.fromfile(str(pytester.path / "j.xml")) for c in s}
    assert (cases["tput"]["baseline"], cases["tput"]["delta_pct"]) == ("1000", "10.00")
    assert cases["newbie"]["baseline"] == "none" and "delta_pct" not in cases["newbie"]
    md = (pytester.path / "out" / "summary.md").read_text()
    assert "| tput | SUCCESS | 1100 | samples_per_second | +10.0% |" in md
    assert "![performance vs baseline](summary.svg)" in md
    svg = (pytester.path / "out" / "summary.svg").read_text()
    assert svg.startswith("<svg") and "baseline 1000 samples_per_second" in svg and "newbie" in svg
    assert "| lat | SUCCESS | 10.4 | ms | +4.0% |" in step.read_text()


def test_regressions_fail_in_both_directions(pytester, repo):
    perf_models(repo)
    (pytester.path / "base.csv").write_text(BASELINE_CSV)
    res = run(pytester, "--mad-tags=t", "--mad-baseline=base.csv", *values("877", "12"), "--junitxml=j.xml")
    res.assert_outcomes(passed=1, failed=2)
    res.stdout.fnmatch_lines([
        "*tput: regressed 12.3% vs baseline (1000 -> 877 samples_per_second)*",
        "*lat: regressed 20.0% vs baseline (10 -> 12 ms)*",
    ])
    rows = {r["model"]: r for r in perf_rows(pytester.path / "perf.csv")}
    # the measured value is kept (it is true); the status says the run did not meet the baseline
    assert (rows["tput"]["status"], rows["tput"]["performance"], rows["tput"]["relative_change"]) == \
        ("FAILURE", "877", "-12.30")
    assert (rows["lat"]["status"], rows["lat"]["relative_change"]) == ("FAILURE", "20.00")
    assert rows["newbie"]["status"] == "SUCCESS"
    xml = JUnitXml.fromfile(str(pytester.path / "j.xml"))  # xunit2: suite-level properties
    props = {p.name: p.value for s in xml for p in s.properties()}
    assert props["models.json::tput::delta_pct"] == "-12.30" and props["models.json::lat::baseline"] == "10"
    # a lower threshold is stricter; a direction override turns a latency "gain" into a loss
    res = run(pytester, "--mad-tags=lat", "--mad-baseline=base.csv", *values("1000", "9"),
              "--mad-context", "{'metric_direction': {'lat': 'higher'}}", "--mad-regression-threshold=2")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*lat: regressed 10.0% vs baseline (10 -> 9 ms)*"])


@pytest.mark.parametrize("family", ["xunit1", "xunit2"])
def test_baseline_from_an_earlier_junit_file(pytester, repo, family):
    perf_models(repo)
    repo.model("multi", """
        printf 'model,performance,metric\\nbs1,100,samples_per_second\\nbs2,%s,samples_per_second\\n' "${BS2:-200}" > "$MAD_OUTPUT_CSV"
    """, multiple_results="out.csv", metric_direction="higher")
    run(pytester, "--mad-tags=t", "--junitxml=first.xml", "-o", f"junit_family={family}").assert_outcomes(passed=4)
    res = run(pytester, "--mad-tags=t", "--mad-baseline=first.xml", *values("1000", "30"),
              "--mad-context", "{'docker_env_vars': {'BS2': '150'}}", "-o", f"junit_family={family}")
    res.assert_outcomes(passed=2, failed=2)
    res.stdout.fnmatch_lines(["*lat: regressed 200.0% vs baseline (10 -> 30 ms)*",
                              "*multi: multi_bs2: regressed 25.0% vs baseline (200 -> 150 samples_per_second)*",
                              "*multi_bs1*SUCCESS*100*+0.0%*", "*multi_bs2*FAILURE*150*-25.0%*"])
    rows = {r["model"]: r for r in perf_rows(pytester.path / "perf.csv")[4:]}  # the second run
    assert rows["multi_bs1"]["status"] == "SUCCESS" and rows["multi_bs2"]["status"] == "FAILURE"
    assert rows["multi_bs2"]["relative_change"] == "-25.00"


def test_bad_baseline_is_a_usage_error(pytester, repo):
    perf_models(repo)
    res = run(pytester, "--mad-tags=t", "--mad-baseline=missing.csv")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*--mad-baseline *missing.csv: cannot read the file*"])
    (pytester.path / "odd.csv").write_text("name,value\nx,1\n")
    res = run(pytester, "--mad-tags=t", "--mad-baseline=odd.csv")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*odd.csv: not a perf.csv: missing column(s) model, performance, metric*"])
    (pytester.path / "odd.xml").write_text("<testsuites><testsuite>")
    res = run(pytester, "--mad-tags=t", "--mad-baseline=odd.xml")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*odd.xml: not well-formed XML*"])


def test_pytest_html_report_gets_the_table(pytester, repo):
    pytest.importorskip("pytest_html")
    perf_models(repo)
    (pytester.path / "base.csv").write_text(BASELINE_CSV)
    run(pytester, "--mad-tags=t", "--mad-baseline=base.csv", "--html=report.html").assert_outcomes(passed=3)
    text = (pytester.path / "report.html").read_text()
    assert '<table class="mad-results">' in text and "<td>no baseline</td>" in text and "<svg" in text
