"""SLURM monitoring cost and latency: 50 short jobs from one pytest run.

Generates 50 one-node models that sleep a few seconds and print a performance line, runs
them on the cluster of .ci/setup-slurm.sh with one pytest run (optionally -n W xdist
workers), then prints:

* controller calls per job-minute: the pollers' own count of squeue + sacct + scontrol
  (sbatch/scancel/sinfo are not monitoring) over the sum, for all jobs, of the minutes
  from submission to the item's result (Submit from sacct, result from a conftest hook);
* the delay from a job's end to its item's result: against sacct's End (whole seconds,
  so it overstates by up to 1 s) and against the batch script's end marker (exact).

    python benchmarks/bench_slurm.py [--jobs 50] [--seconds 10] [--workers 1] [--partition debug]

Aims: under one controller call per job-minute; under 2 s from a job's end to its result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFTEST = '''
import json, os, time

def pytest_runtest_makereport(item, call):
    if call.when == "call":
        with open(os.path.join(os.environ["BENCH_DIR"], f"results.{os.getpid()}.jsonl"), "a") as fh:
            fh.write(json.dumps({"model": item.name, "t": time.time()}) + "\\n")
'''


def parse_time(text: str) -> float | None:
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each job runs")
    parser.add_argument("--workers", type=int, default=1, help="xdist workers (0 = no xdist)")
    parser.add_argument("--dist", default="", help="xdist --dist mode (e.g. loadfile: a worker gets every job at once)")
    parser.add_argument("--partition", default="debug")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_slurm_") as tmp:
        root = Path(tmp)
        (root / "scripts" / "b").mkdir(parents=True)
        (root / "scripts" / "b" / "run.sh").write_text(
            f'sleep {args.seconds}\necho "performance: $((RANDOM % 100 + 1)) samples_per_second"\n')
        entries = [{"name": f"job{i:03d}", "dockerfile": "docker/b", "scripts": "scripts/b/run.sh", "n_gpus": "0",
                    "tags": ["bench"]} for i in range(args.jobs)]
        (root / "models.json").write_text(json.dumps(entries))
        (root / "conftest.py").write_text(CONFTEST)
        ctx = {"slurm_args": {"PARTITION": args.partition, "TIME": "10", "SUBMIT_AHEAD": args.jobs}}
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--mad-tags=bench",
                "--mad-context", json.dumps(ctx), "-o", "junit_family=xunit1", "--junitxml=junit.xml"]
        if args.workers:
            argv += ["-n", str(args.workers)] + ([f"--dist={args.dist}"] if args.dist else [])
        t0 = time.time()
        done = subprocess.run(argv, cwd=root, capture_output=True, text=True, env={**__import__("os").environ,
                                                                                   "BENCH_DIR": tmp})
        wall = time.time() - t0
        if done.returncode != 0:
            sys.exit(f"pytest failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
        calls: dict[str, int] = {}
        for f in (root / "mad_logs").glob("slurm_poller.*.json"):
            for name, n in json.loads(f.read_text())["calls"].items():
                calls[name] = calls.get(name, 0) + n
        monitoring = sum(calls.get(c, 0) for c in ("squeue", "sacct", "scontrol"))
        results = {}
        for f in root.glob("results.*.jsonl"):
            for line in f.read_text().splitlines():
                r = json.loads(line)
                results[r["model"]] = r["t"]
        ids = {}
        for e in entries:
            log = (root / "mad_logs" / f"{e['name']}.log").read_text()
            job_id = log.split("SLURM job ", 1)[1].split()[0]
            ids[job_id] = e["name"]
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ",".join(ids), "--format=JobID,Submit,Start,End,State"],
                             capture_output=True, text=True, check=True).stdout
        watched, end_delay, marker_delay, states = 0.0, [], [], {}
        for line in out.splitlines():
            job_id, submit, _start, end, state = line.split("|")
            name = ids[job_id]
            states[state] = states.get(state, 0) + 1
            result_t = results[name]
            watched += result_t - (parse_time(submit) or t0)
            end_delay.append(result_t - (parse_time(end) or result_t))
            marker = root / "mad_logs" / f"{name}.slurm" / f"{job_id}.done"
            marker_delay.append(result_t - marker.stat().st_mtime)
    job_minutes = watched / 60
    print(f"{args.jobs} jobs of {args.seconds:g} s, {args.workers or 'no'} xdist worker(s) {args.dist}, wall {wall:.1f} s; "
          f"states {states}")
    print(f"controller calls (pollers' own count): {calls}")
    print(f"monitoring calls (squeue+sacct+scontrol): {monitoring} over {job_minutes:.1f} job-minutes "
          f"-> {monitoring / job_minutes:.2f} calls per job-minute (aim < 1); {monitoring / args.jobs:.2f} per job")
    for label, values in (("sacct End (1 s resolution)", end_delay), ("end marker (exact)", marker_delay)):
        print(f"delay from job end to item result, vs {label}: median {statistics.median(values):.2f} s, "
              f"p90 {sorted(values)[int(0.9 * (len(values) - 1))]:.2f} s, max {max(values):.2f} s (aim < 2 s)")


if __name__ == "__main__":
    main()
