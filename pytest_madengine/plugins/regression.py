"""The pytest plugins of a regression run, registered by ``plugin.py`` at configure time:
largest-first order of models on a GPU pool, the baseline check, the summaries."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pytest_madengine.errors import UsageError
from pytest_madengine.gpus.scheduling import gpu_demand, largest_first
from pytest_madengine.plugins.items import ModelItem
from pytest_madengine.results import baseline as baseline_mod
from pytest_madengine.results.result import ModelResult
from pytest_madengine.results.summary import HtmlSummary, SummaryWriter


class LargestFirst:
    """Orders model items by GPUs taken, most first, when a GPU pool is in use."""

    def __init__(self, mad: Any) -> None:
        self.mad = mad

    @pytest.hookimpl(trylast=True)  # after tag selection and any other reordering
    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config,
                                      items: list[pytest.Item]) -> None:
        pool = self.mad.pool
        if pool.mode == "none" or not pool.ids:
            return
        size = len(pool.ids)
        items[:] = largest_first(
            items, lambda it: gpu_demand(it.model.n_gpus, size) if isinstance(it, ModelItem) else None)


class BaselineCheck:
    """After a model passes, compares each result row with the baseline's row of that name;
    worse by more than the threshold fails the model (see ``baseline.py``)."""

    def __init__(self, baseline: baseline_mod.Baseline, threshold_pct: float, directions: dict[str, str]) -> None:
        self.baseline = baseline
        self.threshold_pct = threshold_pct
        self.directions = directions

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        return [f"madengine: baseline {self.baseline.path} ({len(self.baseline.entries)} entries), "
                f"regression threshold {self.threshold_pct:g}%"]

    @pytest.hookimpl(tryfirst=True)  # before user hooks, so they see the final status
    def pytest_mad_result(self, item: Any, result: ModelResult) -> None:
        if not result.passed:
            return
        model = getattr(item, "model", None)
        field = getattr(model, "raw", {}).get("metric_direction") if model is not None else None
        try:
            comparisons = baseline_mod.compare(result, self.baseline, self.threshold_pct, self.directions, field)
        except UsageError as exc:
            result.fail(f"{getattr(model, 'source', '')} entry '{result.model}': field 'metric_direction': {exc}")
            return
        baseline_mod.apply(result, comparisons)


def register(config: pytest.Config, mad: Any) -> None:
    """Raises UsageError (a bad baseline file, threshold or metric_direction)."""
    pm = config.pluginmanager
    pm.register(LargestFirst(mad), "madengine-largest-first")
    path = config.getoption("mad_baseline")
    threshold = config.getoption("mad_regression_threshold")
    if threshold is None or threshold < 0:
        raise UsageError(f"--mad-regression-threshold must be a percentage >= 0, not {threshold}")
    if path:
        root = Path(config.invocation_params.dir)
        full = Path(path) if os.path.isabs(path) else root / path
        directions = baseline_mod.validate_directions(mad.context.get("metric_direction"), "context")
        pm.register(BaselineCheck(baseline_mod.load(full), threshold, directions), "madengine-baseline")
    if not hasattr(config, "workerinput"):
        out = config.getoption("mad_summary")
        summary_path = None
        if out:
            summary_path = Path(out) if os.path.isabs(out) else Path(config.invocation_params.dir) / out
        writer = SummaryWriter(config, summary_path)
        pm.register(writer, "madengine-summary")
        if pm.hasplugin("html"):
            pm.register(HtmlSummary(writer), "madengine-html-summary")
