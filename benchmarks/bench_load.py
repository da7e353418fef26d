"""Load: N trivial models (local executor) with ``-n W`` against plain pytest-xdist.

Generates N models whose script prints one performance line, runs them with
``--mad-executor=local -n W`` and, as the baseline measured in the same run, plain pytest
(no plugin) running N trivial tests with ``-n W`` where each test runs the same script in a
subprocess (the same work, without the plugin). Prints the wall times and their ratio, the
peak RSS (VmHWM) of the controller and of the largest worker, and checks that perf.csv and
the JUnit file have exactly one row / testcase per model.

    python benchmarks/bench_load.py [--models 1000] [--workers 4]
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = 'echo "performance: 1 samples_per_second"\n'
PLAIN = '''import subprocess
import pytest

@pytest.mark.parametrize("i", range({n}))
def test_trivial(i):
    subprocess.run(["bash", "run.sh"], check=True, capture_output=True)
'''


@dataclass(frozen=True)
class Measured:
    wall_s: float
    controller_kib: int
    worker_kib: int
    rc: int
    output: str


def _hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def measure(argv: list[str], cwd: Path) -> Measured:
    """Run argv; sample the controller's and its python children's peak RSS until it ends."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read() if proc.stdout else b""), daemon=True)
    reader.start()
    peak_ctl, peak_worker = 0, 0
    while proc.poll() is None:
        peak_ctl = max(peak_ctl, _hwm(proc.pid))
        for child in _children(proc.pid):
            try:
                if b"python" in Path(f"/proc/{child}/cmdline").read_bytes():
                    peak_worker = max(peak_worker, _hwm(child))
            except OSError:
                pass
        time.sleep(0.2)
    wall = time.perf_counter() - start
    reader.join()
    return Measured(wall, peak_ctl, peak_worker, proc.returncode, b"".join(out).decode(errors="replace"))


def make_models(folder: Path, n: int) -> list[str]:
    (folder / "scripts" / "m").mkdir(parents=True)
    (folder / "scripts" / "m" / "run.sh").write_text(SCRIPT)
    names = [f"m{i:04d}" for i in range(n)]
    entries = [{"name": name, "dockerfile": "docker/m", "scripts": "scripts/m/run.sh", "n_gpus": "0",
                "tags": ["load"]} for name in names]
    (folder / "models.json").write_text(json.dumps(entries))
    return names


def completeness(folder: Path, names: list[str]) -> list[str]:
    """What is wrong with perf.csv and JUnit: [] when each model has exactly one row and testcase."""
    problems = []
    with open(folder / "perf.csv", newline="") as fh:
        rows = collections.Counter(r["model"] for r in csv.DictReader(fh))
    cases = collections.Counter(c.get("name") for c in ET.parse(folder / "j.xml").getroot().iter("testcase"))
    for what, counted in (("perf.csv rows", rows), ("testcases", cases)):
        if counted != collections.Counter(names):
            problems.append(f"{what}: {len(counted)} models, {sum(counted.values())} entries for {len(names)} models")
    return problems


def run_load(n: int, workers: int, folder: Path) -> dict[str, object]:
    mad, plain = folder / "mad", folder / "plain"
    mad.mkdir()
    plain.mkdir()
    names = make_models(mad, n)
    (plain / "run.sh").write_text(SCRIPT)
    (plain / "test_plain.py").write_text(PLAIN.format(n=n))
    base = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", str(workers)]
    with_plugin = measure([*base, "--mad-executor=local", "--mad-tags=load", "--junitxml=j.xml"], mad)
    # -p no:madengine: plain pytest-xdist, the plugin not even loaded
    baseline = measure([*base, "-p", "no:madengine", "test_plain.py"], plain)
    return {"models": n, "workers": workers, "wall_s": round(with_plugin.wall_s, 1),
            "plain_wall_s": round(baseline.wall_s, 1), "ratio": round(with_plugin.wall_s / baseline.wall_s, 2),
            "controller_peak_mib": round(with_plugin.controller_kib / 1024, 1),
            "worker_peak_mib": round(with_plugin.worker_kib / 1024, 1),
            "plain_controller_peak_mib": round(baseline.controller_kib / 1024, 1),
            "plain_worker_peak_mib": round(baseline.worker_kib / 1024, 1),
            "rc": with_plugin.rc, "plain_rc": baseline.rc, "problems": completeness(mad, names),
            "tail": with_plugin.output[-1500:] if with_plugin.rc else ""}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mad-bench-load-") as tmp:
        result = run_load(args.models, args.workers, Path(tmp))
    print(json.dumps(result, indent=1))
    if result["rc"] != 0 or result["problems"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
