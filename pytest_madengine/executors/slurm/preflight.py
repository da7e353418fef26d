"""Node health before submitting (``slurm.preflight: true``): the partition's idle nodes
(``sinfo``), a quick ``srun`` on each, every other node excluded; a clear refusal when fewer
good nodes than the job needs are left. The parsing and the choice are pure; ``check`` runs
the commands through the poller's controller (counted, with timeouts).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pytest_madengine.executors.slurm.deploy import SlurmSettings
from pytest_madengine.executors.slurm.records import expand_hostlist

CHECK_TIMEOUT_S = 60.0
IDLE_STATES = ("idle",)


@dataclass(frozen=True)
class Verdict:
    good: tuple[str, ...]
    bad: dict[str, str]  # node -> why (not idle, the srun check failed)
    problem: str = ""  # non-empty: refuse to submit

    def note(self) -> str:
        bad = "; ".join(f"{n}: {why}" for n, why in sorted(self.bad.items())) or "none"
        return f"preflight: good nodes {', '.join(self.good) or 'none'}; excluded: {bad}"


def parse_sinfo(text: str) -> dict[str, str]:
    """``sinfo -h -N -o '%N %t'`` -> node -> short state (``idle``, ``drain``, ``alloc``...)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            out[parts[0]] = parts[1].rstrip("*~#!%$@^-")
    return out


def sinfo_argv(s: SlurmSettings) -> list[str]:
    argv = ["sinfo", "-h", "-N", "-o", "%N %t"]
    if s.partition:
        argv += ["-p", s.partition]
    if s.constraint:
        argv += ["-C", s.constraint]
    return argv


def srun_argv(s: SlurmSettings, node: str, job_name: str) -> list[str]:
    argv = ["srun", f"--nodelist={node}", "--nodes=1", "--ntasks=1", "--time=1", f"--job-name={job_name}",
            "--immediate=30", "--quiet"]
    if s.partition:
        argv.append(f"--partition={s.partition}")
    if s.reservation:
        argv.append(f"--reservation={s.reservation}")
    if s.account:
        argv.append(f"--account={s.account}")
    return [*argv, "true"]


def choose(s: SlurmSettings, states: dict[str, str], checks: dict[str, str]) -> Verdict:
    """``checks``: node -> "" (passed) or why it failed, for the idle nodes checked."""
    excluded = set()
    for part in (s.exclude,):
        if part:
            excluded |= set(expand_hostlist(part))
    bad: dict[str, str] = {}
    good: list[str] = []
    for node in sorted(states, key=_natural):
        if node in excluded:
            continue
        if states[node] not in IDLE_STATES:
            bad[node] = f"state {states[node]}"
        elif checks.get(node):
            bad[node] = checks[node]
        else:
            good.append(node)
    problem = ""
    if len(good) < s.nodes:
        problem = (f"preflight: {len(good)} healthy idle node(s) ({', '.join(good) or 'none'}) but the job needs "
                   f"slurm.nodes {s.nodes}; not submitted (" + "; ".join(f"{n}: {w}" for n, w in sorted(bad.items()))
                   + ")")
    return Verdict(tuple(good), bad, problem)


def _natural(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def excluded(s: SlurmSettings, v: Verdict) -> str:
    """The ``--exclude`` value: the user's and every node the preflight found wanting."""
    names = [*(expand_hostlist(s.exclude) if s.exclude else []), *sorted(v.bad, key=_natural)]
    return ",".join(dict.fromkeys(names))


def check(s: SlurmSettings, job_name: str, run: Callable[[list[str], float], str]) -> Verdict:
    """``run(argv, timeout)`` returns stdout or raises (any Exception: the check failed)."""
    states = parse_sinfo(run(sinfo_argv(s), 30.0))
    idle = [n for n, st in states.items() if st in IDLE_STATES]

    def one(node: str) -> tuple[str, str]:
        try:
            run(srun_argv(s, node, job_name), CHECK_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any failure marks the node bad, with its reason
            return node, f"srun check failed: {str(exc)[:200]}"
        return node, ""

    checks: dict[str, str] = {}
    if idle:
        with ThreadPoolExecutor(max_workers=min(8, len(idle))) as pool:
            checks = dict(pool.map(one, idle))
    return choose(s, states, checks)
