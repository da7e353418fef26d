"""Load (issue #15, point 3), the CI-sized version of benchmarks/bench_load.py: 200 trivial
models with ``-n 4`` end complete (one perf.csv row and one testcase each) with bounded
memory, at a bounded cost over plain pytest-xdist doing the same work (measured in the same
run). The README's figures come from the benchmark with 1,000 models."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> object:
    spec = importlib.util.spec_from_file_location("bench_load", ROOT / "benchmarks" / "bench_load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_load"] = module
    spec.loader.exec_module(module)
    return module


def test_two_hundred_models_on_four_workers(tmp_path: Path) -> None:
    result = _bench().run_load(200, 4, tmp_path)  # type: ignore[attr-defined]
    assert result["rc"] == 0 and result["plain_rc"] == 0, result
    assert result["problems"] == [], result
    # Peak RSS: ~57 MiB controller and ~55 MiB per worker measured (plain xdist: ~52/51).
    assert 0 < result["controller_peak_mib"] < 150, result
    assert 0 < result["worker_peak_mib"] < 150, result
    # ~3.2x measured on 2 cores (each model also takes the environment snapshot madengine takes);
    # the bound catches a per-model cost that grows, not the machine's noise.
    assert result["ratio"] < 8, result
