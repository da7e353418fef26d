"""Results out: perf.csv rows (madengine 2.x columns), JUnit properties, the summary table."""

from __future__ import annotations

import csv
import fcntl
import io
import socket
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import baseline
from .result import FAILURE, ModelResult, fmt_value

PERF_COLUMNS = (
    "model", "n_gpus", "nnodes", "gpus_per_node", "training_precision", "pipeline", "args", "tags",
    "docker_file", "base_docker", "docker_sha", "docker_image", "git_commit", "machine_name",
    "deployment_type", "launcher", "gpu_architecture", "performance", "metric", "relative_change",
    "status", "build_duration", "test_duration", "dataname", "data_provider_type", "data_size",
    "data_download_duration", "build_number", "additional_docker_run_options",
)


def git_commit(root: Path) -> str:
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def run_meta(root: Path, env: Mapping[str, str]) -> dict[str, str]:
    return {
        "git_commit": git_commit(root),
        "machine_name": socket.gethostname(),
        "build_number": env.get("BUILD_NUMBER", ""),
        "pipeline": env.get("pipeline", ""),
    }


def _num(v: float | None) -> str:
    return "" if v is None else fmt_value(v)


def perf_rows(result: ModelResult, meta: Mapping[str, str]) -> list[dict[str, str]]:
    """One row per result; a failed model still gets one FAILURE row."""
    props = result.properties
    ngpus = result.n_gpus if result.runtime_ngpus is None else result.runtime_ngpus
    common = {
        "n_gpus": str(ngpus),
        "nnodes": str(props.get("nnodes", 1)),
        "gpus_per_node": str(ngpus),
        "training_precision": result.training_precision,
        "pipeline": meta.get("pipeline", ""),
        "args": result.args,
        "tags": ",".join(result.tags),
        "docker_file": result.dockerfile,
        "base_docker": result.base_docker,
        "docker_sha": str(props.get("docker_sha", "")),
        "docker_image": result.image,
        "git_commit": meta.get("git_commit", ""),
        "machine_name": meta.get("machine_name", ""),
        "deployment_type": result.executor,
        "launcher": str(props.get("launcher", "")),
        "gpu_architecture": result.gpu_architecture,
        "relative_change": str(props.get("relative_change", "")),
        "build_duration": f"{result.build_duration:.2f}" if result.build_duration else "",
        "test_duration": f"{result.duration:.2f}",
        "dataname": result.dataname,
        "build_number": meta.get("build_number", ""),
        "additional_docker_run_options": "",
    }
    rows = result.rows or [None]
    out = []
    for row in rows:
        out.append({
            **common,
            "model": row.name if row else result.model,
            "performance": _num(row.performance) if row else "",
            "metric": row.metric if row else "",
            "status": row.status if row else result.status if result.status != "SUCCESS" else FAILURE,
            "relative_change": (baseline.row_property(result, "delta_pct", row.name) if row else "")
            or common["relative_change"],
        })
    return out


def append_perf_csv(path: Path, rows: Sequence[Mapping[str, str]]) -> None:
    """Append under an exclusive lock, header first in a new file; an existing file keeps its
    own column order (madengine appends across runs) and unknown columns stay empty."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", newline="", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.seek(0)
            header_line = fh.readline()
            columns = next(csv.reader([header_line])) if header_line.strip() else None
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            if columns is None:
                columns = list(PERF_COLUMNS)
                writer.writerow(columns)
            for row in rows:
                writer.writerow([row.get(c, "") for c in columns])
            fh.seek(0, io.SEEK_END)
            fh.write(buf.getvalue())  # one write: concurrent appenders never interleave rows
            fh.flush()
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def junit_properties(result: ModelResult) -> list[tuple[str, str]]:
    first = result.rows[0] if result.rows else None
    props = [
        ("model", result.model),
        ("status", result.status),
        ("performance", _num(first.performance) if first else ""),
        ("metric", first.metric if first else ""),
        ("tags", ",".join(result.tags)),
        ("n_gpus", str(result.n_gpus)),
        ("executor", result.executor),
        ("log", result.log),
    ]
    if result.reason:
        props.append(("reason", result.reason))
    if result.gpus:
        props.append(("gpus", ",".join(map(str, result.gpus))))
    if result.image:
        props.append(("docker_image", result.image))
    props.append(("test_duration", f"{result.duration:.2f}"))
    if result.build_duration:
        props.append(("build_duration", f"{result.build_duration:.2f}"))
    if len(result.rows) > 1 or (first and first.name != result.model):
        for row in result.rows:
            props.append((f"performance:{row.name}", _num(row.performance)))
            props.append((f"metric:{row.name}", row.metric))
    # The rest of a perf.csv row, so `pytest-madengine merge --perf-csv` can rebuild it.
    for key, text in (("args", result.args), ("training_precision", result.training_precision),
                      ("docker_file", result.dockerfile), ("base_docker", result.base_docker),
                      ("gpu_architecture", result.gpu_architecture), ("dataname", result.dataname),
                      ("runtime_ngpus", "" if result.runtime_ngpus is None else str(result.runtime_ngpus))):
        if text:
            props.append((key, text))
    for key, value in sorted(result.properties.items()):
        if key not in ("pid",):
            props.append((key, str(value)))
    for w in result.warnings:
        props.append(("warning", w))
    return props


def metrics_block(props: Iterable[tuple[str, str]]) -> str:
    lines = ["[pytest-madengine metrics]"]
    lines += [f"{k}={v}" for k, v in props]
    return "\n".join(lines) + "\n"


def summary_rows(results: Iterable[ModelResult]) -> list[tuple[str, str, str, str, str]]:
    out = []
    for r in results:
        rows = r.rows or [None]
        for row in rows:
            out.append((
                row.name if row else r.model,
                r.status if row is None else row.status,
                _num(row.performance) if row else "",
                row.metric if row else "",
                baseline.delta_cell(r, row.name) if row else "",
            ))
    return out


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


def result_from_report(report: Any) -> ModelResult | None:
    data = getattr(report, "mad_result", None)
    return ModelResult.from_dict(data) if isinstance(data, dict) else None
