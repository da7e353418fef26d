"""The shared poller against a scripted controller: batching, backoff, end markers,
errors, accounting fallback, id reuse. Intervals are scaled down 25x."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_madengine.executors.slurm import poller as P
from pytest_madengine.executors.slurm.records import JobRecord

SCALE = 25.0


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MIN_INTERVAL", "MAX_INTERVAL", "MARKER_INTERVAL", "CONFIRM_DELAY"):
        monkeypatch.setattr(P, name, getattr(P, name) / SCALE)


class FakeController(P.Controller):
    """Jobs' states as the test sets them; every call is logged with its ids."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[str, JobRecord] = {}  # what squeue shows
        self.accounting: dict[str, list[JobRecord]] = {}  # what sacct / scontrol show
        self.log: list[tuple[str, tuple[str, ...]]] = []
        self.fail_squeue = 0
        self.sacct_error: P.ControllerError | None = None
        self.lock = threading.Lock()

    def _count(self, name: str, ids: list[str] | tuple[str, ...] = ()) -> None:
        with self.lock:
            self.calls[name] += 1
            self.log.append((name, tuple(ids)))

    def squeue(self, ids: list[str]) -> dict[str, JobRecord]:
        self._count("squeue", ids)
        if self.fail_squeue:
            self.fail_squeue -= 1
            raise P.ControllerError("squeue: slurm_load_jobs error: Unable to contact slurm controller")
        return {i: replace(self.live[i], source="squeue") for i in ids if i in self.live}

    def sacct(self, ids: list[str]) -> dict[str, list[JobRecord]]:
        self._count("sacct", ids)
        if self.sacct_error is not None:
            raise self.sacct_error
        return {i: [replace(r, source="sacct") for r in self.accounting.get(i, [])] for i in ids}

    def scontrol_jobs(self) -> dict[str, list[JobRecord]]:
        self._count("scontrol")
        return {i: [replace(r, source="scontrol") for r in v] for i, v in self.accounting.items()}


def rec(job_id: str, state: str, name: str = "job", submit: float | None = None, **kw: object) -> JobRecord:
    kw.setdefault("partition", "debug")
    return JobRecord(job_id, state, name=name, submit=time.time() if submit is None else submit, **kw)  # type: ignore[arg-type]


def test_one_batched_call_per_round_for_every_live_job() -> None:
    ctl = FakeController()
    poller = P.SlurmPoller(ctl, use_sacct=True)
    ids = [str(i) for i in range(1, 6)]
    for i in ids:
        ctl.live[i] = rec(i, "RUNNING", start=time.time())
    watches = [poller.watch(i, "job", time.time() - 1) for i in ids]
    time.sleep(0.3)
    squeues = [ids_ for name, ids_ in ctl.log if name == "squeue"]
    assert squeues and all(sorted(x) == ids for x in squeues), ctl.log
    for i in ids:  # all end together: one accounting call finishes them all
        del ctl.live[i]
        ctl.accounting[i] = [rec(i, "COMPLETED", exit_code="0:0", nodes="n1")]
    for w in watches:
        assert w.done.wait(2), w
    assert all(w.final is not None and w.final.state == "COMPLETED" for w in watches)
    sacct_calls = [x for name, x in ctl.log if name == "sacct"]
    assert len(sacct_calls) == 1 and sorted(sacct_calls[0]) == ids


def test_backoff_doubles_to_the_cap_and_restarts_on_a_change() -> None:
    ctl = FakeController()
    ctl.live["1"] = rec("1", "PENDING")
    poller = P.SlurmPoller(ctl, use_sacct=True)
    poller.watch("1", "job", time.time())
    time.sleep(40 / SCALE)  # 40 s of cluster time: 0.5, 1.5, 3.5, 7.5, 15.5, 25.5, 35.5 -> 7 calls
    n = ctl.calls["squeue"]
    assert 5 <= n <= 8, n
    ctl.live["1"] = rec("1", "RUNNING", start=time.time())  # a change: back to 0.5 s
    time.sleep(12 / SCALE)
    ctl.live["1"] = rec("1", "CANCELLED")
    ctl.accounting["1"] = [rec("1", "CANCELLED", exit_code="0:15")]
    time.sleep(4 / SCALE)
    assert ctl.calls["squeue"] - n >= 3


def test_end_marker_brings_the_final_sacct_forward(tmp_path: Path) -> None:
    ctl = FakeController()
    ctl.live["7"] = rec("7", "RUNNING", name="mad-x-m", start=time.time(), nodes="n[1-2]")
    poller = P.SlurmPoller(ctl, use_sacct=True)
    marker = tmp_path / "7.done"
    w = poller.watch("7", "mad-x-m", time.time() - 1, marker)
    time.sleep(30 / SCALE)  # the interval has grown to 10 s
    before = dict(ctl.calls)
    # slurmdbd's first record of a short job: name 'allocation', no partition, first node only
    ctl.accounting["7"] = [rec("7", "COMPLETED", name="allocation", partition="", exit_code="0:0", nodes="n1")]
    t0 = time.monotonic()
    marker.write_text("0 n[1-2] debug\n")
    assert w.done.wait(3 / SCALE + 0.5)
    assert time.monotonic() - t0 < 2 / SCALE + 0.5  # slack for a loaded 2-core CI machine
    assert w.final is not None and (w.final.nodes, w.final.partition, w.final.name) == ("n[1-2]", "debug", "mad-x-m")
    assert ctl.calls["sacct"] - before.get("sacct", 0) == 1


def test_controller_errors_are_retried_not_fatal() -> None:
    ctl = FakeController()
    ctl.fail_squeue = 4
    ctl.live["3"] = rec("3", "RUNNING", start=time.time())
    poller = P.SlurmPoller(ctl, use_sacct=True)
    w = poller.watch("3", "job", time.time() - 1)
    time.sleep(3 / SCALE)
    assert poller.down_for() > 0 and "Unable to contact" in poller.last_error
    time.sleep(20 / SCALE)
    assert ctl.fail_squeue == 0 and poller.down_for() == 0
    del ctl.live["3"]
    ctl.accounting["3"] = [rec("3", "COMPLETED", exit_code="0:0")]
    assert w.done.wait(30 / SCALE)
    assert w.final is not None and w.final.state == "COMPLETED"


def test_without_accounting_scontrol_gives_the_final_state() -> None:
    ctl = FakeController()
    ctl.sacct_error = P.AccountingDisabled("sacct: error: Slurm accounting storage is disabled")
    poller = P.SlurmPoller(ctl, use_sacct=True)
    ctl.live["5"] = rec("5", "COMPLETED")  # squeue knows it ended, but has no exit code
    ctl.accounting["5"] = [rec("5", "FAILED", exit_code="3:0", nodes="n2")]
    w = poller.watch("5", "job", time.time() - 1)
    assert w.done.wait(30 / SCALE)
    assert w.final is not None and (w.final.state, w.final.exit_code) == ("FAILED", "3:0")
    assert poller.use_sacct is False and ctl.calls["scontrol"] >= 1 and ctl.calls["sacct"] == 1


def test_env_switch_disables_sacct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAD_SLURM_SACCT", "0")
    assert P.SlurmPoller(FakeController()).use_sacct is False
    monkeypatch.delenv("MAD_SLURM_SACCT")
    assert P.SlurmPoller(FakeController()).use_sacct is True


def test_a_reused_id_is_not_taken_for_ours() -> None:
    """The controller was reset: id 9 now names another job in squeue and accounting
    holds an older job 9 too. Ours is only found once its own record appears."""
    ctl = FakeController()
    submitted = time.time()
    ctl.live["9"] = rec("9", "RUNNING", name="someone-else")
    ctl.accounting["9"] = [rec("9", "COMPLETED", name="mad-run-m", submit=submitted - 86400, exit_code="0:0")]
    poller = P.SlurmPoller(ctl, use_sacct=True)
    w = poller.watch("9", "mad-run-m", submitted)
    assert not w.done.wait(10 / SCALE)
    ctl.accounting["9"].append(rec("9", "FAILED", name="mad-run-m", submit=submitted, exit_code="1:0"))
    assert w.done.wait(30 / SCALE)
    assert w.final is not None and w.final.state == "FAILED"


def test_a_job_nobody_knows_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "GONE_AFTER_S", 0.2)
    ctl = FakeController()
    w = P.SlurmPoller(ctl, use_sacct=True).watch("11", "job", time.time())
    assert w.done.wait(40 / SCALE)
    assert w.final is None and "known to neither squeue nor sacct" in w.gone


def test_calls_are_counted_by_command() -> None:
    ctl = FakeController()
    ctl.live["1"] = rec("1", "RUNNING")
    poller = P.SlurmPoller(ctl, use_sacct=True)
    poller.watch("1", "job", time.time())
    time.sleep(2 / SCALE)
    assert poller.stats()["calls"] == dict(Counter(name for name, _ in ctl.log))
