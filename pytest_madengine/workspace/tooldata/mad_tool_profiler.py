"""pytest-madengine tools ``cpu_info_profiler``, ``gpu_info_power_profiler``, ``gpu_info_vram_profiler``.

``python3 mad_tool_profiler.py --mode cpu|power|vram <workload argv>`` runs the workload and
samples it every ``<MODE>_SAMPLING_RATE`` seconds into ``<MODE>_OUTPUT_FILE`` (CSV) until it
ends, then exits with the workload's own status (128 + signal when a signal ended it).

cpu: the workload's process tree (CPU % of one core, resident memory, process count), from /proc.
power / vram: each GPU (``<MODE>_DEVICE``: ``all`` or a comma list of indices) through
nvidia-smi or rocm-smi, whichever the environment has.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, TextIO

PREFIX = {"cpu": "CPU", "power": "POWER", "vram": "VRAM"}


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # the name may hold spaces and parentheses
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def _tree(root: int) -> list[int]:
    tree, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, []))
    return out


def _cpu_sample(root: int) -> tuple[float, int, int]:
    """(CPU ticks used so far, resident bytes, processes) of the tree under ``root``."""
    ticks, rss, n = 0.0, 0, 0
    page = os.sysconf("SC_PAGE_SIZE")
    for pid in _tree(root):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                stat = fh.read()
            with open(f"/proc/{pid}/statm") as fh:
                resident = int(fh.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] == "Z":  # ended, not yet reaped: nothing resident, its CPU time is counted no more
            continue
        if resident == 0:  # no memory of its own yet (between fork and exec) or any more: not a sample
            continue
        ticks += float(fields[11]) + float(fields[12])  # utime + stime
        rss += resident * page
        n += 1
    return ticks, rss, n


def _devices(spec: str) -> set[str] | None:
    return None if spec.strip().lower() in ("", "all") else {d.strip() for d in spec.split(",") if d.strip()}


def _gpu_sample(mode: str) -> list[tuple[str, str]]:
    """(device, value) per GPU: watts (power) or used MiB (vram)."""
    if shutil.which("nvidia-smi"):
        query = "index,power.draw" if mode == "power" else "index,memory.used"
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
        return [(i.strip(), v.strip()) for i, _, v in (line.partition(",") for line in out.splitlines()) if v]
    flag = ["--showpower"] if mode == "power" else ["--showmeminfo", "vram"]
    out = subprocess.run(["rocm-smi", *flag, "--json"], capture_output=True, text=True, timeout=30).stdout
    data: dict[str, Any] = json.loads(out or "{}")
    rows = []
    for card, values in sorted(data.items()):
        if not card.startswith("card") or not isinstance(values, dict):
            continue
        for key, value in values.items():
            if mode == "power" and "Power (W)" in key:
                rows.append((card[4:], str(value)))
                break
            if mode == "vram" and "Used" in key and "(B)" in key:
                rows.append((card[4:], f"{int(value) / 2**20:.1f}"))
                break
    return rows


class Sampler:
    def __init__(self, mode: str, root: int, out: TextIO) -> None:
        prefix = PREFIX[mode]
        self.mode, self.root, self.start = mode, root, time.time()
        self.devices = _devices(os.environ.get(f"{prefix}_DEVICE", "all"))
        self.writer = csv.writer(out)
        self.out = out
        self.last: tuple[float, float] | None = None
        header = {"cpu": ["timestamp", "elapsed_s", "cpu_percent", "rss_mb", "processes"],
                  "power": ["timestamp", "elapsed_s", "device", "power_w"],
                  "vram": ["timestamp", "elapsed_s", "device", "vram_used_mb"]}[mode]
        self.writer.writerow(header)

    def sample(self) -> None:
        now = time.time()
        stamp, elapsed = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)), f"{now - self.start:.2f}"
        if self.mode == "cpu":
            ticks, rss, n = _cpu_sample(self.root)
            if n == 0:
                return  # the workload has ended
            hz = os.sysconf("SC_CLK_TCK")
            percent = 0.0
            if self.last is not None and now > self.last[0]:
                percent = max(0.0, (ticks - self.last[1]) / hz / (now - self.last[0]) * 100)
            self.last = (now, ticks)
            self.writer.writerow([stamp, elapsed, f"{percent:.1f}", f"{rss / 2**20:.1f}", n])
        else:
            try:
                rows = _gpu_sample(self.mode)
            except (OSError, subprocess.SubprocessError, ValueError) as exc:
                print(f"{self.mode} profiler: sample failed: {exc}", file=sys.stderr)
                return
            for device, value in rows:
                if self.devices is None or device in self.devices:
                    self.writer.writerow([stamp, elapsed, device, value])
        self.out.flush()


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] != "--mode" or argv[1] not in PREFIX:
        print("usage: mad_tool_profiler.py --mode cpu|power|vram <workload argv>", file=sys.stderr)
        return 2
    mode, workload = argv[1], argv[2:]
    prefix = PREFIX[mode]
    rate = max(0.01, float(os.environ.get(f"{prefix}_SAMPLING_RATE", "0.1")))
    path = os.environ.get(f"{prefix}_OUTPUT_FILE") or f"{mode}_info_profiler_output.csv"
    child = subprocess.Popen(workload)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # stopping us stops the workload
        signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    with open(path, "w", newline="") as out:
        sampler = Sampler(mode, child.pid, out)
        while True:
            sampler.sample()
            try:
                code = child.wait(timeout=rate)
                break
            except subprocess.TimeoutExpired:
                continue
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
