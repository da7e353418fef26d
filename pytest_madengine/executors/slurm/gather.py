"""Results of a ``slurm``-key job, read per node after it ended (pure apart from reading the
given files).

Multi-node (the rules the multi-node runs of the other backends use, ``multinode/node.py``):
node 0's output carries the run's performance; other nodes pass on exit 0 without a number
(a plain value they print is kept as a property, never taken as the run's); rank-tagged values
and per-rank results files of every node are combined with the metric's aggregation rule, and
only when every node sent its own (a sum over the nodes that happened to report is not the
run's figure).

slurm_multi: the first ``perf*.csv`` in ``results_dir`` (madengine's place), else the job's
output; never a success without a value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pytest_madengine.errors import MetricsError
from pytest_madengine.multinode.ranks import RankValue, combine, rank_file_values, rank_files, rank_lines
from pytest_madengine.output import file_lines
from pytest_madengine.results.metrics import ResultRow, find_performance_lines, parse_multiple_results


@dataclass
class Gathered:
    rows: list[ResultRow] | None = None  # None: node 0's output decides as usual
    problem: str = ""
    properties: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def nodes(outputs: Sequence[Path], node_dirs: Sequence[Path], model: str, multiple_results: str) -> Gathered:
    """``outputs[k]``/``node_dirs[k]``: node k's output file and run folder."""
    out = Gathered()
    values: list[RankValue] = []
    contributed: set[int] = set()
    for k, (log, folder) in enumerate(zip(outputs, node_dirs)):
        mine = rank_lines(file_lines(log), model, k)  # read lazily: a node's output may be gigabytes
        files = rank_files(folder, multiple_results)
        if files and not (folder / multiple_results).exists():
            try:
                mine += rank_file_values(files, model, k)
            except MetricsError as exc:
                out.problem = f"node {k}: {exc}"
                return out
        if mine:
            contributed.add(k)
        values += mine
        if k > 0 and not mine:
            plain = [p for p in find_performance_lines(file_lines(log), limit=1)]
            if plain:
                out.properties[f"node{k}_performance"] = f"{plain[0].raw_value} {plain[0].metric}"
    if len(outputs) > 1:
        out.properties["performance_reported_by"] = "node_rank 0"
    sources = {v.source for v in values}
    if len(sources) < 2:
        return out
    lacking = sorted(set(range(len(outputs))) - contributed)
    if lacking:
        out.problem = f"per-rank results are incomplete: node(s) {lacking} reported no per-rank values"
        return out
    try:
        combined = combine(values)
    except MetricsError as exc:
        out.problem = str(exc)
        return out
    if combined is None:
        return out
    out.rows = [ResultRow(name, value, f"{value:g}", metric) for name, value, metric in combined.rows]
    out.properties["aggregation"] = combined.rule
    out.properties["aggregated_ranks"] = str(combined.sources)
    out.warnings = combined.warnings
    return out


def results_file(results_dir: Path, newer_than: float = 0.0) -> Path | None:
    """madengine's choice: the first ``perf*.csv`` in ``results_dir`` (by name), among files
    written after ``newer_than`` (epoch): an earlier run's file is never this run's result."""
    try:
        found = sorted(p for p in results_dir.iterdir() if p.is_file() and p.name.startswith("perf")
                       and p.suffix == ".csv" and p.stat().st_mtime >= newer_than)
    except OSError:
        return None
    return found[0] if found else None


def slurm_multi(results_dir: Path | None, model: str, newer_than: float = 0.0) -> Gathered:
    """Rows from ``results_dir``'s perf CSV; without ``results_dir`` the job's output decides."""
    out = Gathered()
    if results_dir is None:
        return out
    path = results_file(results_dir, newer_than)
    if path is None:
        out.problem = f"slurm.results_dir: no perf*.csv written in {results_dir} by the job"
        return out
    out.properties["results_file"] = str(path)
    try:
        rows = parse_multiple_results(path, model)
    except MetricsError as exc:
        out.problem = f"slurm.results_dir: {exc}"
        return out
    # A perf.csv row of the model itself keeps the model's name; other rows are <model>_<row model>.
    out.rows = [ResultRow(model if r.name == f"{model}_{model}" else r.name, r.performance, r.raw_performance,
                          r.metric) for r in rows]
    return out
