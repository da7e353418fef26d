"""The first step of a model's status: its run's outcome, then its metrics. Later steps (the
multi-node verdict, the baseline check, the result hook) change it through
``ModelResult.fail``/``succeed`` only (see results/result.py)."""

from __future__ import annotations

import signal
from pathlib import Path

from pytest_madengine.errors import MetricsError
from pytest_madengine.executors.base import RunOutcome
from pytest_madengine.results.errorscan import ErrorHit
from pytest_madengine.results.metrics import PerfLine, ResultRow, choose_result, parse_multiple_results
from pytest_madengine.results.result import FAILURE, SUCCESS, Row


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def evaluate(model_name: str, outcome: RunOutcome, perf_lines: list[PerfLine],
             multiple_results: str, run_dir: Path, timeout: float | None,
             hf_line: PerfLine | None = None, total: int | None = None,
             error_hit: ErrorHit | None = None) -> tuple[str, str, list[Row], list[str]]:
    """(status, reason, rows, warnings). Pass = the run ended with exit 0, its output holds no
    error pattern (``results/errorscan.py``) and every value is a number."""
    warnings: list[str] = []
    if outcome.problem:
        return FAILURE, outcome.problem, [], warnings
    if outcome.interrupted:
        return FAILURE, f"interrupted after {outcome.duration:.1f} s", [], warnings
    if outcome.timed_out:
        return FAILURE, f"timed out after {timeout:g} s", [], warnings
    if outcome.exit_code != 0:
        reason = describe_exit(outcome.exit_code if outcome.exit_code is not None else -9)
        return FAILURE, reason + (f"; {error_hit.reason()}" if error_hit else ""), [], warnings
    if error_hit is not None:
        return FAILURE, error_hit.reason(), [], warnings
    rows: list[ResultRow]
    if outcome.rows is not None:  # read by the backend (combined per-rank values, a results file)
        rows = list(outcome.rows)
        if not rows:
            return FAILURE, "no performance value was reported", [], warnings
    elif multiple_results:
        try:
            rows = parse_multiple_results(run_dir / multiple_results, model_name)
        except MetricsError as exc:
            return FAILURE, str(exc), [], warnings
    else:
        if not perf_lines and hf_line is not None:
            # madengine's HuggingFace fallback: train_samples_per_second when no performance line
            perf_lines = [hf_line]
            warnings.append("no 'performance:' line; used the HuggingFace train_samples_per_second value")
        chosen, more = choose_result(model_name, perf_lines, total=total)
        warnings += more
        if chosen is None:
            return FAILURE, "no performance line ('performance: <value> <metric>') in the output", [], warnings
        rows = [chosen]
    bad = [r for r in rows if r.performance is None]
    if bad:
        r = bad[0]
        which = "" if r.name == model_name else f" of '{r.name}'"
        return FAILURE, f"performance{which} is not a number: {r.raw_performance!r} {r.metric}", [], warnings
    return SUCCESS, "", [Row(r.name, r.performance, r.metric, SUCCESS, dict(r.extra)) for r in rows], warnings
