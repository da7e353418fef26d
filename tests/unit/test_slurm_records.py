"""Reading squeue/sacct/scontrol output, job-id capture, id-reuse matching (pure)."""

from __future__ import annotations

import time

import pytest

from pytest_madengine.executors.slurm.executor import framework_log_order
from pytest_madengine.executors.slurm.records import (
    JobRecord,
    describe_final,
    expand_hostlist,
    job_ids_from_output,
    parse_sacct,
    parse_scontrol_jobs,
    parse_squeue,
    parse_time,
    pick_record,
)


def epoch(text: str) -> float:
    return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))


def test_squeue_lines() -> None:
    out = ("12|RUNNING|None|n[1-2]|debug|2026-01-02T03:04:05|2026-01-02T03:04:06|2026-01-02T03:06:06|mad-abc-m|x\n"
           "13|PENDING|BeginTime||batch|2026-01-02T03:04:05|2026-01-02T04:04:05|N/A|mad-abc-n\n"
           "garbage line\n")
    recs = parse_squeue(out)
    assert set(recs) == {"12", "13"}
    r = recs["12"]
    assert (r.state, r.nodes, r.partition, r.name, r.reason) == ("RUNNING", "n[1-2]", "debug", "mad-abc-m|x", "None")
    assert r.submit == epoch("2026-01-02T03:04:05") and r.start == epoch("2026-01-02T03:04:06") and r.end is None
    p = recs["13"]
    assert p.pending and p.start is None and p.reason == "BeginTime" and p.nodes == "" and not p.final


def test_sacct_lines_and_states() -> None:
    out = ("7|COMPLETED|0:0|n1|debug|2026-01-02T03:04:05|2026-01-02T03:04:05|2026-01-02T03:04:09|None|mad-a-m\n"
           "8|FAILED|3:0|n[2-3]|debug|2026-01-02T03:04:05|2026-01-02T03:04:06|2026-01-02T03:04:07|None|mad-a-f\n"
           "9|CANCELLED by 0|0:15|None assigned|debug|2026-01-02T03:04:05|Unknown|2026-01-02T03:05:00|BeginTime|j\n"
           "9|TIMEOUT|0:15|n4|batch|2025-12-01T00:00:00|2025-12-01T00:00:01|2025-12-01T00:01:30|None|old\n")
    recs = parse_sacct(out)
    assert recs["7"][0].final and recs["7"][0].exit_code == "0:0" and recs["7"][0].end == epoch("2026-01-02T03:04:09")
    assert describe_final(recs["8"][0]) == "SLURM job 8 FAILED (exit 3:0) on n[2-3]"
    cancelled = recs["9"][0]
    assert cancelled.state == "CANCELLED" and cancelled.nodes == "" and cancelled.start is None
    assert describe_final(cancelled) == "SLURM job 9 CANCELLED (exit 0:15) before it started (Reason=BeginTime)"
    assert len(recs["9"]) == 2


def test_scontrol_one_line_records() -> None:
    out = ("JobId=5 JobName=my job name UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=1 "
           "JobState=COMPLETED Reason=None Dependency=(null) ExitCode=0:0 RunTime=00:00:01 "
           "SubmitTime=2026-01-02T03:04:05 EligibleTime=2026-01-02T03:04:05 StartTime=2026-01-02T03:04:06 "
           "EndTime=2026-01-02T03:04:07 Partition=debug NodeList=n[1-2] BatchHost=n1 NumNodes=2\n"
           "JobId=6 JobName=p UserId=root(0) JobState=PENDING Reason=Priority ExitCode=0:0 "
           "SubmitTime=2026-01-02T03:04:05 StartTime=Unknown EndTime=Unknown Partition=batch NodeList=(null)\n")
    recs = parse_scontrol_jobs(out)
    r = recs["5"][0]
    assert (r.name, r.state, r.exit_code, r.nodes, r.partition) == ("my job name", "COMPLETED", "0:0", "n[1-2]", "debug")
    assert r.end == epoch("2026-01-02T03:04:07") and r.source == "scontrol"
    assert recs["6"][0].pending and recs["6"][0].nodes == "" and recs["6"][0].reason == "Priority"


def test_times() -> None:
    assert parse_time("Unknown") is None and parse_time("N/A") is None and parse_time("None") is None
    assert parse_time(" 2026-01-02T03:04:05 ") == epoch("2026-01-02T03:04:05")


def test_id_reuse_never_picks_an_older_job() -> None:
    """After a controller reset ids start again: accounting holds old job 9 and ours."""
    ours_submitted = epoch("2026-01-02T03:04:05")
    old = JobRecord("9", "COMPLETED", name="mad-run1-m", submit=epoch("2026-01-01T00:00:00"), partition="debug",
                    source="sacct")
    same_name_old = JobRecord("9", "FAILED", name="mad-run2-m", submit=ours_submitted - 3600, partition="debug",
                              source="sacct")
    ours = JobRecord("9", "RUNNING", name="mad-run2-m", submit=ours_submitted, partition="debug", source="sacct")
    other = JobRecord("9", "RUNNING", name="someone-else", submit=ours_submitted + 1, partition="debug",
                      source="sacct")
    assert pick_record([old, same_name_old, ours, other], "mad-run2-m", ours_submitted) is ours
    assert pick_record([old, same_name_old], "mad-run2-m", ours_submitted) is None
    assert pick_record([old, other], "mad-run2-m", ours_submitted) is None
    # SLURM prints seconds: a submit up to the slack before ours still counts
    close = JobRecord("9", "PENDING", name="mad-run2-m", submit=ours_submitted - 1, partition="debug", source="sacct")
    assert pick_record([close], "mad-run2-m", ours_submitted) is close
    # a framework's job: its name is learnt, the submit time decides
    assert pick_record([old, other], None, ours_submitted) is other


def test_short_jobs_first_sacct_record_is_accepted() -> None:
    """slurmdbd's first record of a job that ended at once: name 'allocation', no partition."""
    t = epoch("2026-01-02T03:04:05")
    first = JobRecord("4", "COMPLETED", name="allocation", exit_code="0:0", nodes="n1", submit=t, source="sacct")
    assert pick_record([first], "mad-x-m", t) is first
    old = JobRecord("4", "COMPLETED", name="allocation", submit=t - 7200, source="sacct")
    assert pick_record([old], "mad-x-m", t) is None


@pytest.mark.parametrize(("text", "ids"), [
    ("Submitted batch job 42\n", ["42"]),
    ("sglang: 4 nodes\nSubmitted batch job 7\nSubmitted batch job 8\n", ["7", "8"]),
    ("123\n", ["123"]),
    ("123;cluster-a\n", ["123"]),
    ("prefill job:\n 55 \ndecode: Submitted batch job 56\nSubmitted batch job 55\n", ["55", "56"]),
    ("sbatch: error: Batch job submission failed: Invalid partition name specified\n", []),
    ("processed 12 files\nport 8000 ready\n", []),
])
def test_job_ids_from_a_framework_script(text: str, ids: list[str]) -> None:
    assert job_ids_from_output(text) == ids


@pytest.mark.parametrize(("text", "hosts"), [
    ("n1", ["n1"]), ("n[1-3]", ["n1", "n2", "n3"]), ("n[1-2,4],m7", ["n1", "n2", "n4", "m7"]),
    ("gpu-a[01-03]", ["gpu-a01", "gpu-a02", "gpu-a03"]), ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("", []),
])
def test_hostlists(text: str, hosts: list[str]) -> None:
    assert expand_hostlist(text) == hosts


def test_framework_logs_rank_zero_first() -> None:
    names = ["sglang-17.out", "sglang-17.node1.out", "sglang-17.node0.out", "sglang-17.node10.out",
             "sglang-170.node0.out", "job.sbatch", "17.done", "run-node1-17.log"]
    assert framework_log_order(names, "17") == [
        ("sglang-17.node0.out", 0), ("run-node1-17.log", 1), ("sglang-17.node1.out", 1),
        ("sglang-17.node10.out", 10), ("sglang-17.out", None)]
