"""Collection speed: a 10,000-entry models.json collected and tag-selected, against plain
pytest collecting 10,000 trivial parametrized tests, in the same run. Prints the ratio.

    python benchmarks/bench_collection.py [--entries 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_models(folder: Path, n: int) -> None:
    (folder / "scripts" / "m").mkdir(parents=True)
    (folder / "scripts" / "m" / "run.sh").write_text("echo 'performance: 1 x'\n")
    entries = [{"name": f"model_{i}", "dockerfile": "docker/m", "scripts": "scripts/m/run.sh", "n_gpus": "1",
                "tags": ["bench", f"group{i % 10}"], "args": f"--seed {i}", "timeout": 60} for i in range(n)]
    (folder / "models.json").write_text(json.dumps(entries, indent=1))


def make_plain(folder: Path, n: int) -> None:
    (folder / "test_plain.py").write_text(
        "import pytest\n\n"
        f"@pytest.mark.parametrize('i', range({n}))\n"
        "def test_x(i):\n    pass\n"
    )


def timed(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mad, plain = Path(tmp, "mad"), Path(tmp, "plain")
        mad.mkdir(), plain.mkdir()
        make_models(mad, args.entries)
        make_plain(plain, args.entries)
        base = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
        mad_argv = [*base, "--mad-tags=group1,group2,group3", "--mad-executor=local"]
        plain_argv = [*base, "test_plain.py"]
        mad_t, plain_t = [], []
        for _ in range(args.repeat):  # interleaved, so machine noise hits both alike
            plain_t.append(timed(plain_argv, plain))
            mad_t.append(timed(mad_argv, mad))
    m, p = min(mad_t), min(plain_t)
    print(f"entries: {args.entries}")
    print(f"plain pytest, {args.entries} parametrized tests: {p:.2f} s (best of {args.repeat})")
    print(f"pytest-madengine, {args.entries} models.json entries + tag selection: {m:.2f} s (best of {args.repeat})")
    print(f"ratio: {m / p:.2f}x (aim: <= 1.50x)")


if __name__ == "__main__":
    main()
