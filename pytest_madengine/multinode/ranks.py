"""Per-rank performance values in a multi-node (or multi-process) run, and their combination.

Pure: no processes, no sockets. A rank reports a value in one of two ways:

* a performance line carrying rank information before ``performance:`` —
  ``[rank1]: performance: 10 samples_per_second`` (PyTorch), ``[default1]:performance: ...``
  (torchrun ``--tee``, local rank), ``[1,1]<stdout>:performance: ...`` (Open MPI
  ``--tag-output``), ``rank 1 performance: ...`` / ``RANK=1 performance: ...``;
* a per-rank ``multiple_results`` file beside the expected one: for ``results.csv``,
  ``results_rank1.csv`` or ``results.rank1.csv``.

When values come from two or more ranks they are combined per result name with
:func:`metrics.aggregate` (its rule by metric name: throughput summed, per-device figures
and times averaged, memory maxed). When every rank printed exactly the same value for a
metric that would be summed, the value is a global figure each rank repeated: it is taken
once (rule ``rank0``) with a warning, never multiplied by the number of ranks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pytest_madengine.errors import MetricsError
from pytest_madengine.results.metrics import aggregate, aggregation_rule, find_performance_lines, parse_multiple_results

OUR_NOTE = "[pytest-madengine] "
_KEY = "performance:"
_TAG_RE = re.compile(
    r"\[(?P<kind>rank|default|worker|local_rank)\s*(?P<n1>\d+)\]"
    r"|\[\d+,(?P<n2>\d+)\]<std(?:out|err)>"
    r"|\b(?P<kind3>rank|local_rank)\s*[=:#]?\s*(?P<n3>\d+)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class RankValue:
    source: str  # where it came from: "node0 rank 1", "node1 results_rank3.csv"
    name: str  # result name: the model, or "<model>_<row model>" for CSV rows
    value: float | None
    raw: str
    metric: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RankValue:
        value = d.get("value")
        return cls(str(d.get("source", "")), str(d.get("name", "")),
                   float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None,
                   str(d.get("raw", "")), str(d.get("metric", "")))


@dataclass
class Combined:
    rows: list[tuple[str, float, str]]  # (name, value, metric)
    rule: str  # the rule, or "name=rule; ..." when rows differ
    sources: int
    warnings: list[str]


def rank_tag(prefix: str) -> str | None:
    """"rank 3" (a global rank) or "local 3" (a node-local rank) from the text before
    ``performance:``, or None."""
    m = _TAG_RE.search(prefix)
    if m is None:
        return None
    if m.group("n2") is not None:
        return f"rank {int(m.group('n2'))}"
    kind = (m.group("kind") or m.group("kind3") or "").lower()
    number = int(m.group("n1") if m.group("n1") is not None else m.group("n3"))
    return f"{'rank' if kind == 'rank' else 'local'} {number}"


def rank_lines(lines: Iterable[str], model: str, node: int = 0) -> list[RankValue]:
    """The first rank-tagged performance value of each rank in ``lines`` (a log file works;
    our own ``[pytest-madengine]`` notes are skipped)."""
    found: dict[str, RankValue] = {}
    for line in lines:
        if _KEY not in line or line.startswith(OUR_NOTE):
            continue
        at = line.index(_KEY)
        tag = rank_tag(line[:at])
        if tag is None:
            continue
        source = f"node{node} {tag}"
        if source in found:
            continue
        parsed = find_performance_lines([line[at:]], limit=1)
        if parsed:
            p = parsed[0]
            found[source] = RankValue(source, model, p.value, p.raw_value, p.metric)
    return list(found.values())


def rank_files(run_dir: Path, multiple_results: str) -> list[Path]:
    """Per-rank files of a ``multiple_results`` CSV, ordered by rank."""
    if not multiple_results:
        return []
    target = run_dir / multiple_results
    stem, suffix = Path(target.name).stem, Path(target.name).suffix
    pattern = re.compile(rf"{re.escape(stem)}[._]rank(\d+){re.escape(suffix)}$")
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return []
    hits = [(int(m.group(1)), p) for p in entries if p.is_file() and (m := pattern.match(p.name))]
    return [p for _, p in sorted(hits)]


def rank_file_values(files: Sequence[Path], model: str, node: int = 0) -> list[RankValue]:
    """Rows of every per-rank file. Raises MetricsError for a file that cannot be read."""
    values = []
    for path in files:
        for row in parse_multiple_results(path, model):
            values.append(RankValue(f"node{node} {path.name}", row.name, row.performance, row.raw_performance,
                                    row.metric))
    return values


def combine(values: Sequence[RankValue], override: str | None = None) -> Combined | None:
    """Combine values of two or more sources per result name; None when fewer than two
    sources reported (the ordinary single-value rules apply). Raises MetricsError for a
    value that is not a number or a row some sources lack (a rank that failed must fail the
    result, not vanish from it)."""
    sources = list(dict.fromkeys(v.source for v in values))
    if len(sources) < 2:
        return None
    groups: dict[str, list[RankValue]] = {}
    for v in values:
        groups.setdefault(v.name, []).append(v)
    rows: list[tuple[str, float, str]] = []
    rules: dict[str, str] = {}
    warnings: list[str] = []
    for name, group in groups.items():
        metric = group[0].metric
        same = [v for v in group if v.metric == metric]
        if len(same) < len(group):
            others = sorted({v.metric for v in group} - {metric})
            warnings.append(f"{name}: ranks report different metrics ({metric}, {', '.join(others)}); "
                            f"combined the {metric} values only")
        bad = [v for v in same if v.value is None]
        if bad:
            raise MetricsError(f"performance of {bad[0].source} is not a number: {bad[0].raw!r} {metric}")
        have = {v.source for v in same}
        lacking = [s for s in sources if s not in have]
        if lacking:
            raise MetricsError(f"per-rank results are incomplete: '{name}' ({metric}) is missing from "
                               f"{', '.join(lacking)}")
        numbers = [v.value for v in same if v.value is not None]
        rule = aggregation_rule(metric, override)
        if rule == "sum" and len(set(numbers)) == 1 and override is None:
            warnings.append(f"{name}: all {len(numbers)} ranks printed the same value {same[0].raw} {metric}: "
                            "taken once as a global figure, not summed")
            rule = "rank0"
        agg = aggregate(numbers, metric, rule)
        rows.append((name, agg.value, metric))
        rules[name] = agg.rule
    distinct = set(rules.values())
    rule_text = distinct.pop() if len(distinct) == 1 else "; ".join(f"{n}={r}" for n, r in rules.items())
    return Combined(rows=rows, rule=rule_text, sources=len(sources), warnings=warnings)
