"""Parallel runs on a virtual GPU pool: makespan against the ideal schedule, and packing.

1. 32 models that each sleep 2 s on 1 GPU, a virtual pool of 8 GPUs, ``-n 8``: the ideal
   makespan is 32 * 2 / 8 = 8 s. Printed: the models' span (first start to last end, from
   timestamps the scripts record) and the whole command's wall time, each over the ideal.
2. A mixed set of 1/2/4/8-GPU models (same pool, ``-n 8``): packing efficiency =
   sum of GPU-seconds / (pool size * span).

For reference it also times plain pytest-xdist running 32 tests that sleep 2 s with ``-n 8``
(no plugin, no GPUs), which shows what worker start-up alone costs on this machine.

    python benchmarks/bench_parallel.py [--hold 2] [--workers 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """#!/usr/bin/env bash
start=$(date +%s.%N)
sleep "$HOLD"
echo "$MAD_MODEL_NAME $MAD_GPU_IDS $start $(date +%s.%N)" >> "$RECORD"
echo "performance: 1 samples_per_second"
"""


def make_models(folder: Path, demands: list[int], hold: float) -> Path:
    record = folder / "record.txt"
    (folder / "scripts" / "m").mkdir(parents=True)
    (folder / "scripts" / "m" / "run.sh").write_text(SCRIPT)
    entries = [{"name": f"m{i:02d}_{n}gpu", "dockerfile": "docker/m", "scripts": "scripts/m/run.sh", "n_gpus": str(n),
                "tags": ["bench"], "env_vars": {"RECORD": str(record), "HOLD": str(hold)}}
               for i, n in enumerate(demands)]
    (folder / "models.json").write_text(json.dumps(entries, indent=1))
    return record


def run(argv: list[str], cwd: Path) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    return wall


def start_order(record: Path) -> str:
    """GPUs taken by each model, in the order they started ("8 8 4 4 ...")."""
    rows = sorted((float(line.split()[2]), len(line.split()[1].split(","))) for line in record.read_text().splitlines())
    return " ".join(str(n) for _, n in rows)


def spans(record: Path) -> tuple[float, float]:
    """(span from first start to last end, GPU-seconds actually held by the scripts)."""
    starts, ends, gpu_s = [], [], 0.0
    for line in record.read_text().splitlines():
        _name, ids, start, end = line.split()
        starts.append(float(start))
        ends.append(float(end))
        gpu_s += len(ids.split(",")) * (float(end) - float(start))
    return max(ends) - min(starts), gpu_s


def mad(folder: Path, demands: list[int], hold: float, workers: int, pool: int) -> tuple[float, float, float, str]:
    folder.mkdir()
    record = make_models(folder, demands, hold)
    wall = run([sys.executable, "-m", "pytest", "--mad-executor=local", "--mad-tags=bench", "-n", str(workers),
                f"--mad-gpus=0-{pool - 1}", "-p", "no:cacheprovider", "-q"], folder)
    span, gpu_s = spans(record)
    return wall, span, gpu_s, start_order(record)


def plain(folder: Path, n: int, hold: float, workers: int) -> float:
    folder.mkdir()
    (folder / "test_sleep.py").write_text(
        f"import time, pytest\n\n@pytest.mark.parametrize('i', range({n}))\ndef test_sleep(i):\n    time.sleep({hold})\n")
    return run([sys.executable, "-m", "pytest", "-n", str(workers), "-p", "no:cacheprovider", "-q",
                "-p", "no:madengine", "test_sleep.py"], folder)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hold", type=float, default=2.0, help="seconds each model sleeps")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--pool", type=int, default=8)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPU cores; pool of {args.pool} virtual GPUs, -n {args.workers}")
    with tempfile.TemporaryDirectory() as tmp:
        ideal = 32 * args.hold / args.pool
        wall, span, _, _ = mad(Path(tmp, "uniform"), [1] * 32, args.hold, args.workers, args.pool)
        ref = plain(Path(tmp, "plain"), 32, args.hold, args.workers)
        print(f"32 x 1-GPU models, {args.hold:g} s each: ideal makespan {ideal:.1f} s")
        print(f"  models' span  {span:6.2f} s   ratio {span / ideal:.2f}x")
        print(f"  pytest wall   {wall:6.2f} s   ratio {wall / ideal:.2f}x")
        print(f"  plain xdist   {ref:6.2f} s   ratio {ref / ideal:.2f}x  (32 tests sleeping {args.hold:g} s, no plugin)")
        mixed = [8] * 2 + [4] * 4 + [2] * 8 + [1] * 16  # listed any order: the plugin sorts largest-first
        mixed = mixed[::-1]
        wall, span, gpu_s, order = mad(Path(tmp, "mixed"), mixed, args.hold, args.workers, args.pool)
        nominal = sum(mixed) * args.hold
        print(f"mixed 2x8 + 4x4 + 8x2 + 16x1 GPU models, {args.hold:g} s each: {nominal:.0f} GPU-s, "
              f"ideal makespan {nominal / args.pool:.1f} s")
        print(f"  models' span  {span:6.2f} s   ratio {span / (nominal / args.pool):.2f}x")
        print(f"  pytest wall   {wall:6.2f} s")
        print(f"  packing efficiency {gpu_s / (args.pool * span):.2f} (GPU-seconds held / (pool * span))")
        print(f"  GPUs per model, in start order: {order}")


if __name__ == "__main__":
    main()
