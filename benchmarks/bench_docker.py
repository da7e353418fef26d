"""Docker executor overhead, measured against raw Docker in the same run.

* run: wall time per model under the plugin (the JUnit testcase time: run folder, image
  check, container create/start/stream/wait/remove) against `docker run --rm` of the same
  image and script (~1 s of work).
* warm path: the plugin's image resolution when nothing changed (it must not build at all)
  against a raw cached `docker build` of the same Dockerfile.

    python benchmarks/bench_docker.py [--models 6] [--base mad-base:bookworm]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

SCRIPT = "sleep 1\necho 'performance: 100 samples_per_second'\n"


def sh(argv: list[str], cwd: Path | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--base", default=os.environ.get("MAD_TEST_BASE_IMAGE", "mad-base:bookworm"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        (repo / "docker").mkdir()
        (repo / "docker" / "bench.ubuntu.any.Dockerfile").write_text(
            "ARG BASE_DOCKER\nFROM ${BASE_DOCKER}\nRUN echo bench > /bench.txt\n")
        (repo / "scripts" / "bench").mkdir(parents=True)
        (repo / "scripts" / "bench" / "run.sh").write_text(SCRIPT)
        models = [{"name": f"bench{i}", "dockerfile": "docker/bench", "scripts": "scripts/bench/run.sh",
                   "n_gpus": "0", "tags": ["bench"]} for i in range(args.models)]
        (repo / "models.json").write_text(json.dumps(models))
        ctx = json.dumps({"docker_build_arg": {"BASE_DOCKER": args.base}})
        pytest_argv = [sys.executable, "-m", "pytest", "--mad-tags=bench", "--mad-executor=docker",
                       f"--mad-context={ctx}", "-p", "no:cacheprovider", "-q", "--junitxml=j.xml"]
        sh(pytest_argv, repo)  # cold: builds the image once
        (repo / "perf.csv").unlink()
        wall = sh(pytest_argv, repo)  # warm
        cases = {c.get("name"): float(c.get("time")) for c in ET.parse(repo / "j.xml").iter("testcase")}
        rows = list(csv.DictReader(open(repo / "perf.csv")))
        builds = sum(1 for r in rows if r["build_duration"] not in ("", "0", "0.00"))
        image = rows[0]["docker_image"]
        per_model = statistics.mean(cases.values())
        run_only = statistics.mean(float(r["test_duration"]) for r in rows)
        image_check = max(per_model - run_only, 0.0)

        raw_runs = [sh(["docker", "run", "--rm", "-v", f"{repo}/scripts/bench:/w", "-w", "/w", image, "bash", "run.sh"])
                    for _ in range(args.models)]
        raw_build = min(sh(["docker", "build", "-q", "-t", "mad-bench-raw:latest", "--build-arg", f"BASE_DOCKER={args.base}",
                            "-f", "docker/bench.ubuntu.any.Dockerfile", "docker"], repo) for _ in range(3))
        subprocess.run(["docker", "rmi", "-f", "mad-bench-raw:latest", image], capture_output=True)
    raw_run = statistics.mean(raw_runs)
    print(f"models: {args.models}, each ~1 s of work; image {image}")
    print(f"plugin, per model (JUnit testcase time): {per_model:.3f} s   (whole pytest run {wall:.2f} s)")
    print(f"raw `docker run --rm`, per model:        {raw_run:.3f} s")
    print(f"run ratio: {per_model / raw_run:.3f} (aim <= 1.10)")
    print(f"warm path: builds done {builds} (aim 0); image check {image_check:.3f} s per model "
          f"vs raw cached `docker build` {raw_build:.3f} s -> ratio {image_check / raw_build:.3f}")


if __name__ == "__main__":
    main()
