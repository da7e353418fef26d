"""Compare a run's results with a baseline from an earlier run; pure except reading the file.

A baseline is a perf.csv or a JUnit file (either form) of an earlier run. For each result
row name it keeps the LAST row of that name that succeeded with a number: perf.csv is
appended across runs, and a failed (or regressed) row must never become the reference.

Properties a compared result gets (``:<row>`` suffixed when the result has several rows or
its row is not named after the model, as ``performance:<row>`` is; unsuffixed for the
first row):

* ``baseline``: the baseline value, or ``none`` when there is no comparable entry;
* ``delta_pct``: signed change of the value in percent, ``(current - baseline) / |baseline|``;
* ``regressed``: the names of the rows that regressed, comma-separated (only when any).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_madengine.errors import UsageError
from pytest_madengine.results.metrics import direction, parse_number
from pytest_madengine.results.result import SUCCESS, ModelResult, fmt_value

DEFAULT_THRESHOLD_PCT = 5.0
NO_BASELINE = "none"


class BaselineError(UsageError):
    """A --mad-baseline file cannot be read."""


@dataclass(frozen=True)
class Entry:
    name: str
    performance: float
    metric: str


@dataclass(frozen=True)
class Baseline:
    path: str
    entries: Mapping[str, Entry]

    def get(self, name: str, dockerfile: str = "") -> Entry | None:
        """The row of that name; of that name and Dockerfile first, so that a model run with
        several matching Dockerfiles compares each item with its own earlier result."""
        if dockerfile:
            own = self.entries.get(variant_key(name, dockerfile))
            if own is not None:
                return own
        return self.entries.get(name)


def variant_key(name: str, dockerfile: str) -> str:
    return f"{name}\0{dockerfile}"


@dataclass(frozen=True)
class Comparison:
    row: str
    metric: str
    current: float
    baseline: Entry | None
    direction: str
    delta_pct: float | None  # None: nothing to compare with
    regressed: bool
    note: str = ""  # why there is no delta

    def message(self, model: str) -> str:
        assert self.baseline is not None and self.delta_pct is not None
        where = "" if self.row == model else f"{self.row}: "
        return (f"{where}regressed {abs(self.delta_pct):.1f}% vs baseline "
                f"({fmt_value(self.baseline.performance)} -> {fmt_value(self.current)} {self.metric})")


# ----------------------------------------------------------------------------- loading

def load(path: Path) -> Baseline:
    """Read a perf.csv or a JUnit XML file; raises BaselineError naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(f"--mad-baseline {path}: cannot read the file: {exc}") from None
    if text.lstrip().startswith("<"):
        return Baseline(str(path), _from_junit(Path(path)))
    return Baseline(str(path), _from_csv(text, path))


def _from_csv(text: str, path: Path) -> dict[str, Entry]:
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise BaselineError(f"--mad-baseline {path}: empty file; expected a perf.csv or a JUnit XML file")
    try:
        reader = csv.DictReader(lines)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in ("model", "performance", "metric") if c not in header]
        if missing:
            raise BaselineError(f"--mad-baseline {path}: not a perf.csv: missing column(s) {', '.join(missing)} "
                                f"(header: {','.join(header)[:200]})")
        entries: dict[str, Entry] = {}
        for raw in reader:
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if isinstance(v, str) or v is None}
            status = row.get("status", SUCCESS) or SUCCESS
            value = parse_number(row.get("performance", "")) if row.get("performance") else None
            if status != SUCCESS or value is None or not row.get("model"):
                continue
            entries[row["model"]] = Entry(row["model"], value, row.get("metric", ""))
            if row.get("docker_file"):
                entries[variant_key(row["model"], row["docker_file"])] = entries[row["model"]]
    except csv.Error as exc:
        raise BaselineError(f"--mad-baseline {path}: cannot parse as CSV: {exc}") from None
    return entries


def _from_junit(path: Path) -> dict[str, Entry]:
    from pytest_madengine.results.junit import JUnitReadError, read_results

    try:
        results = read_results(path)
    except JUnitReadError as exc:
        raise BaselineError(f"--mad-baseline {exc}") from None
    entries: dict[str, Entry] = {}
    for result in results:
        for row in result.rows:
            if row.status == SUCCESS and row.performance is not None and math.isfinite(row.performance):
                entries[row.name] = Entry(row.name, row.performance, row.metric)
                if result.dockerfile:
                    entries[variant_key(row.name, result.dockerfile)] = entries[row.name]
    return entries


# ----------------------------------------------------------------------------- comparing

def validate_directions(mapping: Any, where: str) -> dict[str, str]:
    """The ``metric_direction`` mapping of the context: {model, row or metric name: higher|lower}."""
    if mapping in (None, {}):
        return {}
    if not isinstance(mapping, Mapping):
        raise UsageError(f"{where}: metric_direction must map model or metric names to 'higher' or 'lower'")
    out = {}
    for key, value in mapping.items():
        try:
            out[str(key)] = direction("", str(value))
        except UsageError as exc:
            raise UsageError(f"{where}: metric_direction[{key!r}]: {exc}") from None
    return out


def resolve_direction(row: str, model: str, metric: str, context: Mapping[str, str],
                      model_field: Any = None) -> str:
    """First that applies: the context's ``metric_direction`` for the row, the model or the
    metric; the models.json field ``metric_direction`` (a word, or a mapping by row or metric
    name); then :func:`metrics.direction`'s reading of the metric name."""
    for key in (row, model, metric):
        if key in context:
            return context[key]
    if isinstance(model_field, str):
        return direction(metric, model_field)
    if isinstance(model_field, Mapping):
        for key in (row, metric):
            if key in model_field:
                return direction(metric, str(model_field[key]))
    elif model_field is not None:
        raise UsageError(f"metric_direction must be 'higher', 'lower' or a mapping, not {model_field!r}")
    return direction(metric)


def compare(result: ModelResult, baseline: Baseline, threshold_pct: float,
            context: Mapping[str, str] | None = None, model_field: Any = None) -> list[Comparison]:
    """One comparison per result row with a number. Worse by more than ``threshold_pct``
    percent (lower for "higher is better" metrics, higher for "lower is better") regresses."""
    out = []
    for row in result.rows:
        if row.performance is None:
            continue
        way = resolve_direction(row.name, result.model, row.metric, context or {}, model_field)
        entry = baseline.get(row.name, result.dockerfile)
        if entry is None:
            out.append(Comparison(row.name, row.metric, row.performance, None, way, None, False, "no baseline"))
            continue
        if entry.metric != row.metric:
            out.append(Comparison(row.name, row.metric, row.performance, entry, way, None, False,
                                  f"metric changed ({entry.metric} -> {row.metric})"))
            continue
        if entry.performance == 0:
            out.append(Comparison(row.name, row.metric, row.performance, entry, way, None, False, "baseline is 0"))
            continue
        delta = (row.performance - entry.performance) / abs(entry.performance) * 100.0
        worse = -delta if way == "higher" else delta
        regressed = round(worse, 9) > threshold_pct  # 5.000000000001% is not worse than 5%
        out.append(Comparison(row.name, row.metric, row.performance, entry, way, delta, regressed))
    return out


def per_row_keys(result: ModelResult) -> bool:
    """Whether row properties carry a ``:<row>`` suffix (as ``performance:<row>`` does)."""
    return len(result.rows) > 1 or bool(result.rows and result.rows[0].name != result.model)


def apply(result: ModelResult, comparisons: list[Comparison]) -> None:
    """Record comparisons on the result; a regression fails the model and its rows."""
    if not comparisons:
        return
    suffixed = per_row_keys(result)
    for i, c in enumerate(comparisons):
        base = fmt_value(c.baseline.performance) if c.baseline is not None and c.delta_pct is not None else NO_BASELINE
        values = {"baseline": base}
        if c.delta_pct is not None:
            values["delta_pct"] = f"{c.delta_pct:.2f}"
        elif c.note != "no baseline":
            values["baseline_note"] = c.note
        for key, value in values.items():
            if suffixed:
                result.properties[f"{key}:{c.row}"] = value
            if i == 0:
                result.properties[key] = value
    regressed = [c for c in comparisons if c.regressed]
    if not regressed:
        return
    result.fail("; ".join(c.message(result.model) for c in regressed), only={c.row for c in regressed})
    result.properties["regressed"] = ",".join(c.row for c in regressed)


def row_property(result: ModelResult, key: str, row_name: str) -> str:
    """A row's ``key`` property: ``key:<row>`` or, for a result's only row, ``key``."""
    props = result.properties
    if f"{key}:{row_name}" in props:
        return str(props[f"{key}:{row_name}"])
    if len(result.rows) <= 1:
        return str(props.get(key, ""))
    return ""


def delta_cell(result: ModelResult, row_name: str) -> str:
    """The summary's delta column: ``-12.3%``, ``no baseline``, or empty when not compared."""
    delta = row_property(result, "delta_pct", row_name)
    if delta:
        try:
            return f"{float(delta):+.1f}%"
        except ValueError:
            return delta
    if row_property(result, "baseline", row_name) == NO_BASELINE:
        return row_property(result, "baseline_note", row_name) or "no baseline"
    return ""
