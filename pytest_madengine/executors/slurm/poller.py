"""One poller per pytest process watches every SLURM job that process submitted.

The controller is asked as little as possible:

* one batched call per round for all live jobs: ``squeue -j a,b,c`` while they run, and
  ``sacct -j a,b,c`` (or, without accounting, ``scontrol show job``) once some have ended;
* rounds back off from 0.5 s after a submission to 10 s, and start over at 0.5 s when a job
  is submitted or changes state (for jobs with an end marker, only when the poller was idle:
  their ends need no round);
* a native job's batch script writes ``<jobid>.done`` when it ends: that file, checked
  every 0.2 s with no call at all, brings the final ``sacct`` forward (0.4 s later, batched
  with whatever else ended meanwhile), so results arrive within about a second.

Errors from the commands (slurmctld restarting, slurmdbd away) are retried with the same
backoff, never fatal; how long the controller has been unreachable is visible to waiters.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from pytest_madengine.executors.slurm.records import (
    SACCT_FIELDS,
    SQUEUE_FORMAT,
    JobRecord,
    parse_sacct,
    parse_scontrol_jobs,
    parse_squeue,
    pick_record,
)

MIN_INTERVAL = 0.5
MAX_INTERVAL = 10.0
MARKER_INTERVAL = 0.2
CONFIRM_DELAY = 0.4  # sacct shows a job's end 0.1-0.3 s after it
COMMAND_TIMEOUT = 60.0
GONE_AFTER_S = 300.0  # a job no command knows any more for this long is given up


class ControllerError(Exception):
    """A command could not reach slurmctld/slurmdbd or failed; worth retrying."""


class AccountingDisabled(ControllerError):
    """sacct cannot work on this cluster (no slurmdbd configured)."""


class Controller:
    """Runs SLURM's commands and counts them (what the benchmark reports)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.call_log = os.environ.get("MAD_SLURM_CALL_LOG", "")

    def run(self, argv: list[str], *, timeout: float = COMMAND_TIMEOUT, env: Mapping[str, str] | None = None) -> str:
        with self._lock:
            self.calls[argv[0]] += 1
        t0 = time.time()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                                  stdin=subprocess.DEVNULL, env=None if env is None else dict(env))
        except FileNotFoundError:
            raise ControllerError(f"{argv[0]} not found on PATH") from None
        except subprocess.TimeoutExpired:
            raise ControllerError(f"{argv[0]} did not answer within {timeout:g} s") from None
        finally:
            if self.call_log:  # MAD_SLURM_CALL_LOG=path: every call, when, how long (for debugging)
                with open(self.call_log, "a", encoding="utf-8") as fh:
                    fh.write(f"{t0:.3f} {time.time() - t0:.3f}s {' '.join(argv)[:300]}\n")
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip().splitlines()
            text = message[-1] if message else f"exit {done.returncode}"
            if "accounting storage is disabled" in text.lower():
                raise AccountingDisabled(text)
            raise ControllerError(f"{argv[0]}: {text}")
        return done.stdout

    def squeue(self, ids: list[str]) -> dict[str, JobRecord]:
        try:
            out = self.run(["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", SQUEUE_FORMAT])
        except ControllerError as exc:
            if "Invalid job id" in str(exc):  # none of them is known any more
                return {}
            raise
        return parse_squeue(out)

    def sacct(self, ids: list[str]) -> dict[str, list[JobRecord]]:
        return parse_sacct(self.run(["sacct", "-n", "-P", "-X", "-j", ",".join(ids),
                                     f"--format={SACCT_FIELDS}"]))

    def scontrol_jobs(self) -> dict[str, list[JobRecord]]:
        try:
            return parse_scontrol_jobs(self.run(["scontrol", "show", "job", "-o"]))
        except ControllerError as exc:
            if "No jobs in the system" in str(exc):
                return {}
            raise

    def scancel(self, ids: list[str]) -> None:
        if ids:
            self.run(["scancel", *ids])

    def partitions(self) -> list[str]:
        return self.run(["sinfo", "-h", "-o", "%P"]).split()


@dataclass(eq=False)
class Watch:
    """One job as the poller sees it. ``done`` is set once its final record is known."""

    job_id: str
    name: str | None  # None: learnt at the first sighting (jobs a framework script submitted)
    submitted: float  # epoch, taken just before sbatch ran
    marker: Path | None = None
    record: JobRecord | None = None  # latest seen
    final: JobRecord | None = None
    gone: str = ""  # why the job could not be followed to its end
    done: threading.Event = field(default_factory=threading.Event)
    marker_seen: float | None = None
    marker_info: list[str] = field(default_factory=list)
    started: float | None = None  # epoch, when first seen running
    missing_since: float | None = None

    @property
    def state(self) -> str:
        rec = self.final or self.record
        return rec.state if rec else "SUBMITTED"


class SlurmPoller:
    def __init__(self, controller: Controller | None = None, *, use_sacct: bool | None = None) -> None:
        self.controller = controller or Controller()
        if use_sacct is None:
            use_sacct = os.environ.get("MAD_SLURM_SACCT", "1").strip().lower() not in ("0", "false", "no", "off")
        self.use_sacct = use_sacct
        self._cond = threading.Condition()
        self._watches: dict[str, Watch] = {}
        self._interval = MIN_INTERVAL
        self._next_poll = 0.0
        self._confirm_at = float("inf")
        self._confirm_delay = CONFIRM_DELAY  # doubles while ended jobs are not final in accounting yet
        self._thread: threading.Thread | None = None
        self.down_since: float | None = None  # monotonic; the controller failed every call since
        self.last_error = ""
        self.rounds = 0
        self.errors = 0  # failed calls (retried)

    # ---- what items use
    def watch(self, job_id: str, name: str | None, submitted: float, marker: Path | None = None) -> Watch:
        w = Watch(job_id, name, submitted, marker)
        with self._cond:
            idle = not any(not x.done.is_set() for x in self._watches.values())
            self._watches[job_id] = w
            soon = time.monotonic() + MIN_INTERVAL
            if idle or marker is None:  # look 0.5 s after the submission, backing off from there
                self._interval = MIN_INTERVAL
                self._next_poll = soon if idle else min(self._next_poll, soon)
            # else: a job with an end marker joins the running schedule; its end is seen without a call
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="mad-slurm-poller", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return w

    def kick(self) -> None:
        """Something changed that the poller did not see (we cancelled jobs): look soon."""
        with self._cond:
            self._interval = MIN_INTERVAL
            self._next_poll = min(self._next_poll, time.monotonic() + MIN_INTERVAL)
            self._cond.notify_all()

    def forget(self, w: Watch) -> None:
        with self._cond:
            if self._watches.get(w.job_id) is w:
                del self._watches[w.job_id]

    def live(self) -> list[Watch]:
        with self._cond:
            return [w for w in self._watches.values() if not w.done.is_set()]

    def down_for(self) -> float:
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

    # ---- the thread
    def _run(self) -> None:
        while True:
            live = self.live()
            if not live:
                with self._cond:
                    while not any(not w.done.is_set() for w in self._watches.values()):
                        self._cond.wait()
                continue
            now = time.monotonic()
            self._scan_markers(live, now)
            due = min(self._next_poll, self._confirm_at)
            if now >= due:
                try:
                    self._poll(live, now)
                except Exception as exc:  # never let the thread die: waiters depend on it
                    self.last_error = f"poller: {exc!r}"
                    self._next_poll = time.monotonic() + MAX_INTERVAL
                continue
            waiting_markers = any(w.marker is not None and w.marker_seen is None for w in live)
            with self._cond:
                self._cond.wait(min(due - now, MARKER_INTERVAL) if waiting_markers else due - now)

    def _scan_markers(self, live: list[Watch], now: float) -> None:
        for w in live:
            if w.marker is not None and w.marker_seen is None and w.marker.exists():
                w.marker_seen = now
                try:  # "<exit status> <nodelist> <partition>", written by the batch script
                    w.marker_info = w.marker.read_text().split()
                except OSError:
                    w.marker_info = []
                self._confirm_delay = CONFIRM_DELAY
                self._confirm_at = min(self._confirm_at, now + CONFIRM_DELAY)

    def _poll(self, live: list[Watch], now: float) -> None:
        self.rounds += 1
        # Jobs whose end we know of (marker, or squeue said so earlier) need their final record.
        ending = [w for w in live if w.marker_seen is not None or (w.record is not None and w.record.final)
                  or w.missing_since is not None]
        changed = False
        ok = True
        if ending:
            # One accounting call for every live job: it refreshes the running ones too.
            changed, ok = self._account(live, now)
        else:
            try:
                recs = self.controller.squeue([w.job_id for w in live])
            except ControllerError as exc:
                ok = False
                self._failed(exc)
            else:
                self._succeeded()
                for w in live:
                    rec = recs.get(w.job_id)
                    if rec is not None and (w.name is None or rec.name == w.name) \
                            and (rec.submit is None or rec.submit >= w.submitted - 60):
                        changed |= self._update(w, rec)
                    elif w.missing_since is None:  # gone from squeue: accounting must say how it ended
                        w.missing_since = now
                        changed = True
        if changed and ok:
            self._interval = MIN_INTERVAL
        else:
            self._interval = min(self._interval * 2, MAX_INTERVAL)
        self._next_poll = time.monotonic() + self._interval
        now = time.monotonic()
        pending_confirm = [w for w in self.live()
                           if (w.marker_seen is not None and now - w.marker_seen < 10 * MAX_INTERVAL)
                           or (w.record is not None and w.record.final)]
        if pending_confirm:  # not final in accounting yet (or the call failed): ask again, backing off
            self._confirm_delay = min(self._confirm_delay * 2, MAX_INTERVAL) if ending else CONFIRM_DELAY
            self._confirm_at = now + (self._confirm_delay if ok else self._interval)
        else:
            self._confirm_at = float("inf")

    def _account(self, live: list[Watch], now: float) -> tuple[bool, bool]:
        ids = [w.job_id for w in live]
        records: dict[str, list[JobRecord]] | None = None
        if self.use_sacct:
            try:
                records = self.controller.sacct(ids)
            except AccountingDisabled:
                self.use_sacct = False
            except ControllerError as exc:
                self.errors += 1
                self.last_error = str(exc)  # slurmdbd away: scontrol still knows recent jobs
        if records is None:
            try:
                records = self.controller.scontrol_jobs()
            except ControllerError as exc:
                self._failed(exc)
                return False, False
        self._succeeded()
        changed = False
        for w in live:
            rec = pick_record(records.get(w.job_id, []), w.name, w.submitted)
            if rec is not None:
                w.missing_since = None
                changed |= self._update(w, rec)
            elif w.missing_since is None:
                w.missing_since = now
            elif now - w.missing_since > GONE_AFTER_S:
                w.gone = (f"SLURM job {w.job_id} is known to neither squeue nor "
                          f"{'sacct' if self.use_sacct else 'scontrol'} any more")
                w.done.set()
                changed = True
        return changed, True

    def _update(self, w: Watch, rec: JobRecord) -> bool:
        before = w.record.state if w.record else None
        incomplete = rec.source == "sacct" and not rec.partition
        if incomplete:
            rec = self._complete(w, rec)
        elif w.name is None:
            w.name = rec.name
        w.record = rec
        if rec.start is not None and w.started is None:
            w.started = rec.start
        if rec.final and rec.source != "squeue":  # squeue has no exit code: accounting confirms
            w.final = rec
            w.done.set()
            return w.marker is None
        # A change restarts the backoff only for jobs without an end marker: the marker
        # already reports the end of the others without any call.
        return rec.state != before and w.marker is None

    @staticmethod
    def _complete(w: Watch, rec: JobRecord) -> JobRecord:
        """slurmdbd's first record of a short job names only its first node and no partition
        (the full one follows about 4 s later): take them from what we saw before."""
        nodes, partition, name = rec.nodes, rec.partition, rec.name
        if w.record is not None and w.record.nodes:
            nodes, partition = w.record.nodes, w.record.partition or partition
        elif len(w.marker_info) >= 3:
            nodes, partition = w.marker_info[1], w.marker_info[2]
        elif w.record is not None:
            partition = w.record.partition or partition
        if w.name is not None:
            name = w.name
        return replace(rec, nodes=nodes, partition=partition, name=name)

    def _failed(self, exc: ControllerError) -> None:
        self.errors += 1
        self.last_error = str(exc)
        if self.down_since is None:
            self.down_since = time.monotonic()

    def _succeeded(self) -> None:
        self.down_since = None

    def stats(self) -> dict[str, object]:
        return {"calls": dict(self.controller.calls), "rounds": self.rounds, "errors": self.errors,
                "use_sacct": self.use_sacct}


_SHARED: SlurmPoller | None = None
_SHARED_LOCK = threading.Lock()


def shared() -> SlurmPoller:
    """The process's poller (created on first use)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = SlurmPoller()
        return _SHARED
