"""What every fault cell asserts, and how it starts and watches a real pytest run.

A cell writes a madengine project whose model names and processes carry a token, runs pytest
on it in a subprocess (so signals can reach it), injects its fault, and then checks with
``check`` that nothing was lost, invented, corrupted or left behind.
"""

from __future__ import annotations

import collections
import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
STATUSES = {"SUCCESS", "FAILURE", "SKIPPED"}


class Project:
    """A madengine checkout in ``path``; every model is named ``<short>_<token>``."""

    def __init__(self, path: Path, token: str | None = None) -> None:
        self.path = path
        self.token = token or uuid.uuid4().hex[:8]
        self.entries: list[dict[str, Any]] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def name(self, short: str) -> str:
        return f"{short}_{self.token}"

    def model(self, short: str, body: str, **fields: Any) -> str:
        name = self.name(short)
        script = self.path / "scripts" / short / "run.sh"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(textwrap.dedent(body).lstrip())
        env = {"FAULT_TOKEN": self.token, **fields.pop("env_vars", {})}
        entry = {"name": name, "dockerfile": "docker/fault", "scripts": f"scripts/{short}/run.sh", "n_gpus": "0",
                 "tags": ["fault"], "args": "", "timeout": 120, "env_vars": env, **fields}
        self.entries.append(entry)
        (self.path / "models.json").write_text(json.dumps(self.entries, indent=1))
        return name

    def env(self, **extra: str) -> dict[str, str]:
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        return {**os.environ, "PYTHONPATH": path, "FAULT_TOKEN": self.token, **extra}

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """pytest on the project, its output in out.txt; FAULT_TOKEN marks it and all it starts."""
        out = open(self.path / "out.txt", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--mad-tags=fault",
                                      "--junitxml=j.xml", *args], cwd=self.path, env=env or self.env(),
                                     stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        return self.proc

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            self.stop()
        return rc, self.out()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def out(self) -> str:
        return (self.path / "out.txt").read_text(errors="replace")

    def signal(self, *signums: int, gap: float = 0.3) -> None:
        assert self.proc is not None
        for s in signums:
            self.proc.send_signal(s)
            time.sleep(gap)

    def wait_for(self, what: Callable[[], bool], timeout: float = 60, why: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not what():
            if time.monotonic() > deadline or (self.proc is not None and self.proc.poll() is not None):
                raise AssertionError(f"never happened: {why}\n{self.out()[-3000:]}")
            time.sleep(0.1)

    def started(self, short: str) -> Callable[[], bool]:
        return lambda: (self.path / "mad_work" / self.name(short) / "started").exists()


def perf_table(path: Path) -> list[dict[str, str]]:
    """perf.csv, parsed strictly: one header, every row as wide as it."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows, f"{path} is empty"
    header = rows[0]
    bad = [r for r in rows[1:] if len(r) != len(header)]
    assert not bad, f"{path}: rows of the wrong width: {bad[:2]}"
    return [dict(zip(header, r)) for r in rows[1:]]


def junit_cases(path: Path) -> dict[str, list[ET.Element]]:
    cases: dict[str, list[ET.Element]] = collections.defaultdict(list)
    for case in ET.parse(path).getroot().iter("testcase"):
        cases[case.get("name", "")].append(case)
    return cases


def our_processes(token: str) -> list[str]:
    """Live processes (zombies aside) whose environment carries FAULT_TOKEN=token."""
    found = []
    needle = f"FAULT_TOKEN={token}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {cmd[:120]}")
        except OSError:
            continue
    return found


def check(project: Project, models: Iterable[str], *, perf: str = "perf.csv", junit: str = "j.xml",
          leftovers: Callable[[], list[str]] | None = None) -> dict[str, dict[str, str]]:
    """Every selected model has exactly one testcase and one perf.csv row, a failure says why,
    perf.csv parses, and nothing of the run is left: processes (and ``leftovers``, e.g. the
    cell's containers or jobs). Returns the rows by model."""
    models = list(models)
    out = project.out()
    rows = perf_table(project.path / perf)
    counts = collections.Counter(r["model"] for r in rows)
    assert counts == collections.Counter(models), f"perf.csv rows {counts} for {models}\n{out[-3000:]}"
    assert all(r["status"] in STATUSES for r in rows), rows
    cases = junit_cases(project.path / junit)
    assert {n: len(c) for n, c in cases.items()} == {m: 1 for m in models}, f"testcases {dict(cases)}\n{out[-3000:]}"
    by_model = {r["model"]: r for r in rows}
    for m in models:
        (case,) = cases[m]
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        if by_model[m]["status"] == "FAILURE":
            assert failure is not None and (failure.get("message") or "").strip(), f"{m}: failure without a reason"
            assert by_model[m]["performance"] == "", f"{m}: a failed run reports a number"
    deadline = time.monotonic() + 15  # a group's SIGTERM grace may still be running out
    left = our_processes(project.token)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = our_processes(project.token)
    assert not left, f"processes left behind: {left}"
    if leftovers is not None:
        assert not leftovers(), f"left behind: {leftovers()}"
    return by_model


def reason(project: Project, model: str, junit: str = "j.xml") -> str:
    (case,) = junit_cases(project.path / junit)[model]
    el = case.find("failure")
    if el is None:
        el = case.find("error")
    return "" if el is None else el.get("message", "")


def peak_rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0



class CuttingProxy:
    """A TCP proxy in front of a registry that plays the registry's death at a known moment:
    once ``cut_after`` bytes have passed one way (``"down"``: registry to Docker, a pull;
    ``"up"``: Docker to registry, a push) it calls ``on_cut`` (which kills the registry),
    stops listening and drops every connection. The transfer is cut where it is, and every
    later try is refused, as by a dead host. Counting bytes, not sleeping, makes "mid-pull"
    certain however fast loopback is."""

    def __init__(self, upstream: str, cut_after: int, direction: str, on_cut: Callable[[], None]) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.cut_after, self.direction, self.on_cut = cut_after, direction, on_cut
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.passed = 0
        self.cut = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="cutting-proxy").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed by the cut
            try:
                server = socket.create_connection(self.upstream, timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self.cut.is_set():
                    client.close()
                    server.close()
                    return
                self._conns += [client, server]
            for src, dst, counted in ((client, server, self.direction == "up"), (server, client, self.direction == "down")):
                threading.Thread(target=self._pipe, args=(src, dst, counted), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
                if counted:
                    with self._lock:
                        self.passed += len(data)
                        due = self.passed >= self.cut_after and not self.cut.is_set()
                    if due:
                        self.kill()
                        return
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def kill(self) -> None:
        """The registry dies now (also the teardown's way to stop the proxy)."""
        with self._lock:
            if self.cut.is_set():
                return
            self.cut.set()
            conns, self._conns = self._conns, []
        self.on_cut()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept above
        except OSError:
            pass
        self.listener.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
