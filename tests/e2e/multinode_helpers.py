"""Running several pytest processes as the nodes of one multi-node run (subprocesses,
optionally inside network namespaces), and reading back what each node reported."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() == "true"
REPO_ROOT = Path(__file__).resolve().parents[2]


def unavailable(reason: str) -> None:
    """Skip, except under CI=true where a missing component is a failure."""
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def need_torch() -> None:
    """PyTorch with gloo and torchrun, checked in a child process (torch stays out of this one)."""
    probe = "import torch.distributed as d; raise SystemExit(0 if d.is_available() and d.is_gloo_available() else 3)"
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"cannot check for PyTorch: {exc}")
    if done.returncode == 3:
        unavailable("this PyTorch has no gloo backend")
    if done.returncode != 0:
        unavailable(f"PyTorch is not installed ({done.stderr.strip().splitlines()[-1:]}); "
                    "pip install torch==2.13.0 (the CPU wheel)")
    if shutil.which("torchrun", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")) is None:
        unavailable("torchrun is not on PATH")


def need_mpirun() -> None:
    if shutil.which("mpirun") is None:
        unavailable("mpirun is not installed (apt-get install openmpi-bin)")


def free_port_pair() -> int:
    """A port P on loopback with P+1 free too (MASTER_PORT and the rendezvous port)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


def node_context(rank: int, nnodes: int = 2, **args: Any) -> dict[str, Any]:
    top = {k: args.pop(k) for k in list(args) if k in ("rendezvous_timeout", "rendezvous_port",
                                                          "docker_build_arg")}
    return {"multi_node_args": {"NNODES": nnodes, "NODE_RANK": rank, **args}, **top}


@dataclass
class Node:
    rank: int
    dir: Path
    proc: subprocess.Popen[str]
    started: float
    out: str = ""
    rc: int | None = None
    seconds: float = 0.0

    def log(self, model: str) -> str:
        return (self.dir / "logs" / f"{model}.log").read_text()

    def perf(self) -> list[dict[str, str]]:
        with open(self.dir / "perf.csv", newline="") as fh:
            return list(csv.DictReader(fh))

    def props(self) -> dict[str, dict[str, str]]:
        """Testcase name -> its JUnit properties (xunit1)."""
        root = ET.parse(self.dir / "junit.xml").getroot()
        return {case.get("name", ""): {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
                for case in root.iter("testcase")}


@dataclass
class Nodes:
    """pytest processes run in ``project`` as nodes: each writes under ``project/node<r>/``."""

    project: Path
    executor: str = "local"
    tags: str = "t"
    nodes: list[Node] = field(default_factory=list)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        # the plugin of this checkout, whatever is pip-installed
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env.pop("PYTEST_ADDOPTS", None)
        env.update(extra or {})
        return env

    def start(self, rank: int, context: dict[str, Any], *extra: str, netns: str | None = None,
              env: dict[str, str] | None = None, name: str | None = None) -> Node:
        d = self.project / (name or f"node{rank}")
        d.mkdir(exist_ok=True)
        argv = [sys.executable, "-m", "pytest", f"--mad-tags={self.tags}", f"--mad-executor={self.executor}",
                "-p", "no:cacheprovider", f"--mad-context={json.dumps(context)}",
                f"--mad-work-dir={d / 'work'}", f"--mad-log-dir={d / 'logs'}", f"--mad-perf-csv={d / 'perf.csv'}",
                "-o", "junit_family=xunit1", f"--junitxml={d / 'junit.xml'}", "-rA", *extra]
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        proc = subprocess.Popen(argv, cwd=self.project, env=self.env(env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        node = Node(rank, d, proc, time.monotonic())
        self.nodes.append(node)
        return node

    def wait(self, timeout: float = 300) -> list[Node]:
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            try:
                node.out, _ = node.proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                node.out, _ = node.proc.communicate()
                raise AssertionError(f"node {node.rank} did not finish in {timeout} s:\n{node.out[-3000:]}") from None
            node.rc = node.proc.returncode
            node.seconds = time.monotonic() - node.started
        return sorted(self.nodes, key=lambda n: n.rank)

    def kill(self) -> None:
        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.kill()


def show(nodes: list[Node]) -> str:
    return "\n".join(f"--- node {n.rank} rc={n.rc} ---\n{n.out[-4000:]}" for n in nodes)


def copy_demo(project: Path, name: str = "dummy_torchrun") -> None:
    """Copy ``scripts/<name>`` into ``project``."""
    shutil.copytree(REPO_ROOT / "scripts" / name, project / "scripts" / name)


class NetnsPair:
    """Two network namespaces joined by a veth pair: 10.200.0.1/24 and 10.200.0.2/24
    (addresses that exist only inside these namespaces)."""

    def __init__(self) -> None:
        tok = uuid.uuid4().hex[:6]
        self.ns = [f"madmn{tok}0", f"madmn{tok}1"]
        self.veth = [f"mv{tok}0", f"mv{tok}1"]
        self.addr = ["10.200.0.1", "10.200.0.2"]

    def _ip(self, *args: str) -> None:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")

    def create(self) -> None:
        for ns in self.ns:
            self._ip("netns", "add", ns)
        self._ip("link", "add", self.veth[0], "type", "veth", "peer", "name", self.veth[1])
        for ns, veth, addr in zip(self.ns, self.veth, self.addr):
            self._ip("link", "set", veth, "netns", ns)
            self._ip("-n", ns, "addr", "add", f"{addr}/24", "dev", veth)
            self._ip("-n", ns, "link", "set", veth, "up")
            self._ip("-n", ns, "link", "set", "lo", "up")

    def delete(self) -> None:
        for ns in self.ns:  # the veth ends go with their namespaces
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)


class NetnsGroup:
    """``n`` network namespaces on one switch: a bridge in a hub namespace of its own (the
    host's network is never touched), node ``i`` at 10.201.0.<i+1>/24 on interface ``eth<i>``."""

    def __init__(self, n: int) -> None:
        tok = uuid.uuid4().hex[:6]
        self.hub = f"madhub{tok}"
        self.ns = [f"madng{tok}{i}" for i in range(n)]
        self.veth = [f"eth{i}" for i in range(n)]  # the node's end, inside its namespace
        self.addr = [f"10.201.0.{i + 1}" for i in range(n)]
        self._tok = tok

    _ip = NetnsPair._ip

    def create(self) -> None:
        self._ip("netns", "add", self.hub)
        self._ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        self._ip("-n", self.hub, "link", "set", "br0", "up")
        for i, (ns, veth, addr) in enumerate(zip(self.ns, self.veth, self.addr)):
            self._ip("netns", "add", ns)
            port = f"p{self._tok}{i}"
            self._ip("-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", veth, "netns", ns)
            self._ip("-n", self.hub, "link", "set", port, "master", "br0")
            self._ip("-n", self.hub, "link", "set", port, "up")
            self._ip("-n", ns, "addr", "add", f"{addr}/24", "dev", veth)
            self._ip("-n", ns, "link", "set", veth, "up")
            self._ip("-n", ns, "link", "set", "lo", "up")

    def delete(self) -> None:
        for ns in [*self.ns, self.hub]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)
