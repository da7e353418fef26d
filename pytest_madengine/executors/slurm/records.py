"""Reading what SLURM's commands print: job records from squeue, sacct and scontrol, job
ids from a submitting script's output, node lists. Pure functions, no processes."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

# A job in one of these states is over; everything else (PENDING, RUNNING, COMPLETING,
# CONFIGURING, SUSPENDED, REQUEUED, RESIZING, SIGNALING, STAGE_OUT, ...) is still live.
FINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "CANCELLED", "PREEMPTED",
    "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT",
})
PENDING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})

# squeue: one line per job; the name goes last because it may hold the separator.
SQUEUE_FORMAT = "%i|%T|%r|%N|%P|%V|%S|%e|%j"
SACCT_FIELDS = "JobID,State,ExitCode,NodeList,Partition,Submit,Start,End,Reason,JobName"


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    state: str  # COMPLETED, FAILED, ... ("CANCELLED by 0" is read as CANCELLED)
    name: str = ""
    exit_code: str = ""  # "3:0" = exit status 3, signal 0
    nodes: str = ""  # "n[1-2]"; "" while none is assigned
    partition: str = ""
    submit: float | None = None  # epoch seconds (SLURM prints local time, to the second)
    start: float | None = None
    end: float | None = None
    reason: str = ""  # why it is pending (Resources, Priority, BeginTime, ...)
    source: str = ""  # squeue, sacct or scontrol

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def pending(self) -> bool:
        return self.state in PENDING_STATES


def parse_time(text: str) -> float | None:
    """SLURM's ``2024-05-01T12:00:00`` (local time) -> epoch; Unknown/None/N/A -> None."""
    text = text.strip()
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", text):
        return None
    return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))


def _state(text: str) -> str:
    word = text.strip().split(" ", 1)[0].rstrip("+")  # "CANCELLED by 0", "RUNNING+"
    return word.upper()


def _nodes(text: str) -> str:
    text = text.strip()
    return "" if text in ("", "None assigned", "(null)", "None") else text


def parse_squeue(text: str) -> dict[str, JobRecord]:
    out: dict[str, JobRecord] = {}
    for line in text.splitlines():
        parts = line.split("|", 8)
        if len(parts) != 9 or not parts[0].strip():
            continue
        job_id, state, reason, nodes, partition, submit, start, end, name = parts
        out[job_id.strip()] = JobRecord(
            job_id=job_id.strip(), state=_state(state), name=name, nodes=_nodes(nodes),
            partition=partition.strip(), submit=parse_time(submit),
            start=parse_time(start) if _state(state) not in PENDING_STATES else None,
            end=parse_time(end) if _state(state) in FINAL_STATES else None,
            reason=reason.strip(), source="squeue",
        )
    return out


def parse_sacct(text: str) -> dict[str, list[JobRecord]]:
    """``sacct -P -n -X --format=SACCT_FIELDS``: every record per id (ids are reused after a
    controller reset, so one id can name several jobs)."""
    out: dict[str, list[JobRecord]] = {}
    for line in text.splitlines():
        parts = line.split("|", 9)
        if len(parts) != 10 or not parts[0].strip():
            continue
        job_id, state, exit_code, nodes, partition, submit, start, end, reason, name = parts
        rec = JobRecord(
            job_id=job_id.strip(), state=_state(state), name=name, exit_code=exit_code.strip(),
            nodes=_nodes(nodes), partition=partition.strip(), submit=parse_time(submit),
            start=parse_time(start), end=parse_time(end), reason=reason.strip(), source="sacct",
        )
        out.setdefault(rec.job_id, []).append(rec)
    return out


_SCONTROL_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z/:_]*)=")


def _scontrol_fields(line: str) -> dict[str, str]:
    """``Key=value Key2=value with spaces ...`` -> dict (a value runs to the next `` Key=``)."""
    fields: dict[str, str] = {}
    matches = list(_SCONTROL_KEY.finditer(line))
    for m, nxt in zip(matches, [*matches[1:], None]):
        value = line[m.end(): nxt.start() if nxt else len(line)]
        fields.setdefault(m.group(1), value.strip())
    return fields


def parse_scontrol_jobs(text: str) -> dict[str, list[JobRecord]]:
    """``scontrol show job -o`` (one line per job)."""
    out: dict[str, list[JobRecord]] = {}
    for line in text.splitlines():
        if not line.startswith("JobId="):
            continue
        f = _scontrol_fields(line)
        # JobName may hold spaces: it runs from after "JobName=" to " UserId=".
        m = re.search(r"\bJobName=(.*?) UserId=", line)
        rec = JobRecord(
            job_id=f.get("JobId", ""), state=_state(f.get("JobState", "")),
            name=m.group(1) if m else f.get("JobName", ""), exit_code=f.get("ExitCode", ""),
            nodes=_nodes(f.get("NodeList", "")), partition=f.get("Partition", ""),
            submit=parse_time(f.get("SubmitTime", "")),
            start=parse_time(f.get("StartTime", "")) if _state(f.get("JobState", "")) not in PENDING_STATES else None,
            end=parse_time(f.get("EndTime", "")) if _state(f.get("JobState", "")) in FINAL_STATES else None,
            reason=f.get("Reason", ""), source="scontrol",
        )
        out.setdefault(rec.job_id, []).append(rec)
    return out


def pick_record(records: Iterable[JobRecord], name: str | None, submitted: float,
                slack: float = 60.0) -> JobRecord | None:
    """The record of OUR job among those with its id: same name (when we know it) and
    submitted no earlier than ``submitted - slack``. Ids restart after a controller reset,
    so accounting can hold an older, unrelated job under the same id; it is never chosen."""
    fits = [r for r in records
            if (name is None or r.name == name or _incomplete(r))
            and (r.submit is None or r.submit >= submitted - slack)]
    if not fits:
        return None
    return max(fits, key=lambda r: r.submit or 0.0)


def _incomplete(rec: JobRecord) -> bool:
    """slurmdbd's first record of a job that started and ended within a second or two has
    no partition and the name ``allocation``; the full record follows a few seconds later.
    Only a job submitted moments ago can look like this (the submit time still has to fit)."""
    return rec.source == "sacct" and not rec.partition


_SUBMITTED = re.compile(r"Submitted batch job (\d+)")
_PARSABLE = re.compile(r"(\d+)(?:;[\w.\-]+)?")


def job_ids_from_output(text: str) -> list[str]:
    """Job ids a submitting script printed: ``Submitted batch job 123`` lines and the bare
    ``123`` / ``123;cluster`` lines of ``sbatch --parsable``, in order, without repeats."""
    ids: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        m = _SUBMITTED.search(line)
        if m is None:
            m = _PARSABLE.fullmatch(line)
        if m and m.group(1) not in ids:
            ids.append(m.group(1))
    return ids


def expand_hostlist(text: str) -> list[str]:
    """``n[1-3,5],gpu-a[01-02]`` -> n1 n2 n3 n5 gpu-a01 gpu-a02 (what `scontrol show hostnames` prints)."""
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", text.strip()):
        hosts.extend(_expand_one(part))
    return hosts


def _expand_one(part: str) -> list[str]:
    m = re.match(r"([^\[]*)\[([^\]]*)\](.*)", part)
    if not m:
        return [part] if part else []
    prefix, ranges, rest = m.groups()
    tails = _expand_one(rest) if rest else [""]
    out = []
    for chunk in ranges.split(","):
        if "-" in chunk:
            lo, hi = chunk.split("-", 1)
            width = len(lo) if lo.startswith("0") else 0
            out += [f"{prefix}{i:0{width}d}{t}" for i in range(int(lo), int(hi) + 1) for t in tails]
        elif chunk:
            out += [f"{prefix}{chunk}{t}" for t in tails]
    return out


def describe_final(rec: JobRecord) -> str:
    """``SLURM job 123 FAILED (exit 3:0) on n1``: the one-line reason of a failed job."""
    text = f"SLURM job {rec.job_id} {rec.state}"
    if rec.exit_code:
        text += f" (exit {rec.exit_code})"
    if rec.nodes:
        text += f" on {rec.nodes}"
    elif rec.state == "CANCELLED":
        text += " before it started"
        if rec.reason and rec.reason != "None":
            text += f" (Reason={rec.reason})"
    return text
