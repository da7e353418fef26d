"""The build phase (``--mad-build-only``), measured against baselines taken in the same run.

* parallel builds: N models with distinct images (each ~1 s of RUN work), built cold with
  ``--mad-build-jobs 1`` and with the default (one per CPU, at most 8); ratio default / serial.
* warm build phase: nothing changed, so nothing is built (the content hash matches), against a
  cached legacy ``docker build`` of each image (what a Makefile-style "just rebuild" costs);
  ratio plugin / raw.

    python benchmarks/bench_build.py [--models 6] [--base mad-base:bookworm]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

SCRIPT = "echo 'performance: 1 x'\n"


PHASE = re.compile(r"build phase: \d+ model\(s\) in ([0-9.]+) s")


def sh(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return time.perf_counter() - start


def phase(argv: list[str], cwd: Path) -> tuple[float, float]:
    """(whole pytest run, the build phase itself as the plugin reports it)."""
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    found = PHASE.search(done.stdout)
    if done.returncode != 0 or found is None:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return wall, float(found.group(1))


def project(repo: Path, n: int, token: str) -> None:
    (repo / "docker").mkdir(parents=True, exist_ok=True)
    (repo / "scripts" / "b").mkdir(parents=True, exist_ok=True)
    (repo / "scripts" / "b" / "run.sh").write_text(SCRIPT)
    models = []
    for i in range(n):
        # Distinct images; the token makes every measurement a cold build.
        (repo / "docker" / f"b{i}.ubuntu.any.Dockerfile").write_text(
            f"ARG BASE_DOCKER\nFROM ${{BASE_DOCKER}}\nRUN sleep 1 && echo {token}-{i} > /b.txt\n")
        models.append({"name": f"madbuildbench{i}", "dockerfile": f"docker/b{i}", "scripts": "scripts/b/run.sh",
                       "n_gpus": "0", "tags": ["bench"]})
    (repo / "models.json").write_text(json.dumps(models))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--base", default=os.environ.get("MAD_TEST_BASE_IMAGE", "mad-base:bookworm"))
    args = parser.parse_args()
    ctx = json.dumps({"docker_build_arg": {"BASE_DOCKER": args.base}})
    argv = [sys.executable, "-m", "pytest", "--mad-tags=bench", "--mad-executor=docker", f"--mad-context={ctx}",
            "-p", "no:cacheprovider", "-q", "--mad-build-only"]
    images = [f"ci-madbuildbench{i}_b{i}.ubuntu.any" for i in range(args.models)]
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        project(repo, args.models, uuid.uuid4().hex[:8])
        serial_wall, serial = phase([*argv, "--mad-build-jobs=1"], repo)
        project(repo, args.models, uuid.uuid4().hex[:8])
        parallel_wall, parallel = phase(argv, repo)
        warm_runs = [phase(argv, repo) for _ in range(3)]
        warm_wall, warm = min(w for w, _ in warm_runs), min(p for _, p in warm_runs)
        raw_env = {**os.environ, "DOCKER_BUILDKIT": "0"}

        def raw_all() -> float:
            return sum(sh(["docker", "build", "-q", "-t", f"{img}-raw", "--build-arg", f"BASE_DOCKER={args.base}",
                           "-f", f"docker/b{i}.ubuntu.any.Dockerfile", "docker"], repo, raw_env)
                       for i, img in enumerate(images))

        raw_all()  # fills the cache
        raw = min(raw_all() for _ in range(3))
        subprocess.run(["docker", "rmi", "-f", *images, *(f"{i}-raw" for i in images)], capture_output=True)
    jobs = max(1, min(8, os.cpu_count() or 1))
    print(f"models: {args.models}, distinct images, ~1 s of RUN work each; CPUs {os.cpu_count()}")
    print(f"cold build phase, --mad-build-jobs 1: {serial:.2f} s; default ({jobs} at a time): {parallel:.2f} s "
          f"-> ratio {parallel / serial:.3f} (lower is better; whole pytest runs {serial_wall:.2f} s vs "
          f"{parallel_wall:.2f} s)")
    print(f"warm build phase (nothing changed, 0 builds): {warm:.2f} s vs {args.models} cached `docker build`: "
          f"{raw:.2f} s -> ratio {warm / raw:.3f}; whole pytest run {warm_wall:.2f} s (ratio {warm_wall / raw:.3f}, "
          "pytest start-up included)")


if __name__ == "__main__":
    main()
