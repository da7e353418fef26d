"""Results out: perf.csv rows (madengine 2.x columns), JUnit properties, the summary table."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import os
import re
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from pytest_madengine.results import baseline
from pytest_madengine.results.metrics import PERF_CSV_COLUMNS
from pytest_madengine.results.result import FAILURE, ModelResult, Row, fmt_value

#: perf.csv's own columns, in madengine's order (defined in :mod:`.metrics` as ``PERF_CSV_COLUMNS``,
#: which also decides which extra ``multiple_results`` column names clash with them).
PERF_COLUMNS = PERF_CSV_COLUMNS

#: perf.csv columns that hold numbers we format ourselves: written as they are, never escaped.
NUMERIC_COLUMNS = frozenset({
    "n_gpus", "nnodes", "gpus_per_node", "performance", "relative_change", "build_duration",
    "test_duration", "data_size", "data_download_duration",
})

_FORMULA_START = ("=", "+", "-", "@")
# Command lines as madengine writes them (``--batch 8``): a quote in front would break every
# reader of perf.csv that parses them, and they come from the user's own models.json.
VERBATIM_COLUMNS = frozenset({"args", "additional_docker_run_options"})
_PLAIN_NUMBER_RE = re.compile(r"[+\-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+\-]?[0-9]+)?")
_BOM = "\ufeff"


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
        "nnodes": str(result.nnodes),
        "gpus_per_node": str(ngpus),
        "training_precision": result.training_precision,
        "pipeline": meta.get("pipeline", ""),
        "args": result.args,
        "tags": ",".join(result.tags),
        "docker_file": result.dockerfile,
        "base_docker": result.base_docker,
        "docker_sha": result.docker_sha,
        "docker_image": result.image,
        "git_commit": str(props.get("git_commit") or meta.get("git_commit", "")),  # the model's clone, else the checkout
        "machine_name": meta.get("machine_name", ""),
        "deployment_type": result.executor,
        "launcher": result.launcher,
        "gpu_architecture": result.gpu_architecture,
        "relative_change": str(props.get("relative_change", "")),
        "build_duration": f"{result.build_duration:.2f}" if result.build_duration else "",
        "test_duration": f"{result.duration:.2f}",
        "dataname": result.dataname,
        "data_provider_type": str(props.get("data_provider_type", "")),
        "data_size": str(props.get("data_size", "")),
        "data_download_duration": str(props.get("data_download_duration", "")),
        "build_number": meta.get("build_number", ""),
        "additional_docker_run_options": str(props.get("additional_docker_run_options", "")),
    }
    rows: list[Row | None] = list(result.rows) or [None]
    out: list[dict[str, str]] = []
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
        if row is not None:
            for key, value in row.extra.items():  # Row keeps these names clear of ours
                out[-1].setdefault(key, value)
    return out


def spreadsheet_safe(value: str) -> str:
    """``value`` with a ``'`` in front when a spreadsheet would run it as a formula: it starts
    with ``=``, ``+``, ``-`` or ``@`` and is not a plain number (``-1.5`` and ``+3e4`` stay)."""
    if value.startswith(_FORMULA_START) and _PLAIN_NUMBER_RE.fullmatch(value) is None:
        return "'" + value
    return value


def _cell(column: str, value: object) -> str:
    text = "" if value is None else str(value)
    return text if column in NUMERIC_COLUMNS or column in VERBATIM_COLUMNS else spreadsheet_safe(text)


def _new_columns(header: Sequence[str], rows: Sequence[Mapping[str, str]]) -> list[str]:
    """Columns the rows carry that the header lacks, in order of first appearance. perf.csv's
    own columns are not added to an existing file that lacks them (as before: an older
    madengine file keeps its own columns); extra ``multiple_results`` columns are."""
    have = set(header)
    new: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key not in have and key not in PERF_COLUMNS:
                new.setdefault(key, None)
    return list(new)


def _same_file(fh: IO[bytes], path: Path) -> bool:
    """Whether the open file is still the one at ``path`` (a rewrite replaces it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fh.fileno())
    return (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino)


def append_perf_csv(path: Path, rows: Sequence[Mapping[str, str]]) -> None:
    """Append rows to perf.csv under an exclusive ``flock``, safe across threads and processes.

    * A new (or empty) file gets perf.csv's own columns, then the rows' extra columns.
    * An existing file keeps its header and column order, columns madengine wrote that we do
      not know included (our rows leave them empty); our own columns it lacks stay out.
    * Rows carrying extra columns the header lacks (``multiple_results`` columns such as
      ``batch_size``): the file is rewritten with the header grown by them, at the end, and
      older rows get empty cells there. The rewrite goes to a temporary file in the same folder,
      is fsynced and then ``os.replace``-d over perf.csv, so a reader sees the old file or the
      new one, never half of one. Otherwise (the common case) it is one append of all the rows.
    * Cells are written for spreadsheets: text starting with ``= + - @`` that is not a plain
      number gets a leading ``'`` (:func:`spreadsheet_safe`), except in :data:`NUMERIC_COLUMNS`.

    The lock is on perf.csv itself (as older versions take it). Since a rewrite swaps the
    file, an appender that got the lock re-checks that its open file is still the one at
    ``path`` and, if not, starts again on the new one; the rewriter never touches the file after
    replacing it, so nothing is written to a file that is no longer perf.csv.
    """
    if not rows:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with open(path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file is closed
            if not _same_file(fh, path):
                continue  # replaced (or removed) while we waited for the lock
            _append_locked(fh, path, rows)
            return


PERF_ENTRY = "perf_entry.csv"


def write_perf_entry(path: Path, rows: Sequence[Mapping[str, str]]) -> None:
    """madengine's ``perf_entry.csv`` ("results are saved to perf_entry.csv"): the rows of the
    latest model that reported (all of a ``multiple_results`` model's rows), perf.csv's columns
    then the rows' extra ones. Replaced whole and atomically for each model, as madengine
    rewrites it; perf.csv keeps every row. OSError when it cannot be written."""
    if not rows:
        return
    path = Path(path)
    columns = list(PERF_COLUMNS)
    columns += _new_columns(columns, rows)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as fh:
            fh.write(_csv_text(columns, columns, rows))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _append_locked(fh: IO[bytes], path: Path, rows: Sequence[Mapping[str, str]]) -> None:
    size = os.fstat(fh.fileno()).st_size
    fh.seek(0)
    first = fh.readline().decode("utf-8", "surrogateescape")
    bom = _BOM if first.startswith(_BOM) else ""
    first = first[len(bom):]
    header = next(csv.reader([first]), []) if first.strip() else []
    if not header:
        if fh.read().strip():  # lines, but no header line first: rewritten with one
            _rewrite(fh, path, [], list(PERF_COLUMNS) + _new_columns([], rows), rows, bom)
            return
        columns = list(PERF_COLUMNS) + _new_columns([], rows)  # a new, empty or blank file
        if size:
            fh.truncate(0)
        _write_all(fh, _csv_text(columns, columns, rows).encode("utf-8", "surrogateescape"), 0)
        return
    new = _new_columns(header, rows)
    if new:
        _rewrite(fh, path, header, header + new, rows, bom)
        return
    fh.seek(size - 1)
    lead = "" if fh.read(1) in (b"\n", b"\r") else "\n"  # a last line without its newline
    _write_all(fh, (lead + _csv_text([], header, rows)).encode("utf-8", "surrogateescape"), size)


def _write_all(fh: IO[bytes], data: bytes, undo_to: int) -> None:
    """Append ``data`` under the lock, unbuffered; when it cannot all be written (a full
    disk) the file is cut back to ``undo_to`` bytes, so no half row stays, and OSError is raised."""
    fh.flush()
    fd = fh.fileno()
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        try:
            os.ftruncate(fd, undo_to)
        except OSError:
            pass
        raise


def _csv_text(header: Sequence[str], columns: Sequence[str], rows: Sequence[Mapping[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(c, row.get(c, "")) for c in columns])
    return buf.getvalue()


def _rewrite(fh: IO[bytes], path: Path, header: list[str], columns: list[str],
             rows: Sequence[Mapping[str, str]], bom: str) -> None:
    """perf.csv under the header ``columns`` (``header`` grown): its old rows padded with empty
    cells, then ``rows``. Atomic: a temporary file in the same folder, fsynced, os.replace-d."""
    fh.seek(0)
    text = fh.read().decode("utf-8", "surrogateescape")
    old = list(csv.reader(io.StringIO(text[len(bom):], newline="")))
    if header:
        old = old[1:]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for cells in old:
        if any(c.strip() for c in cells):  # blank lines dropped
            writer.writerow(cells + [""] * (len(columns) - len(cells)))
    data = (bom + buf.getvalue() + _csv_text([], columns, rows)).encode("utf-8", "surrogateescape")
    mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
    path = Path(os.path.realpath(path))  # a symlinked perf.csv: rewrite its target, keep the link
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def junit_name_ok(name: str) -> bool:
    """Whether a property name survives the ``name=value`` metrics block and the xunit2
    ``<nodeid>::<name>`` suite properties (no ``=``, no ``::``, no line break)."""
    return not any(bad in name for bad in ("=", "::", "\n", "\r"))


def junit_properties(result: ModelResult) -> list[tuple[str, str]]:
    """The result as JUnit ``(name, value)`` properties, read back by
    :func:`pytest_madengine.junit_results.result_from_properties`.

    Each row's extra ``multiple_results`` cells follow its ``performance:<row>`` and
    ``metric:<row>`` properties as ``<column>:<row name>`` (``batch_size:m_bs8`` = ``8``);
    for a result whose only row is named after the model they are ``<column>:<model>``.
    A column whose name cannot be carried (see :func:`junit_name_ok`) is left out of JUnit
    (it is still in perf.csv).
    """
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
    if result.docker_sha:
        props.append(("docker_sha", result.docker_sha))
    if result.nnodes != 1:
        props.append(("nnodes", str(result.nnodes)))
    if result.launcher:
        props.append(("launcher", result.launcher))
    props.append(("test_duration", f"{result.duration:.2f}"))
    if result.build_duration:
        props.append(("build_duration", f"{result.build_duration:.2f}"))
    if len(result.rows) > 1 or (first and first.name != result.model):
        for row in result.rows:
            props.append((f"performance:{row.name}", _num(row.performance)))
            props.append((f"metric:{row.name}", row.metric))
            props += _extra_properties(row.name, row.extra)
    elif first is not None:
        props += _extra_properties(first.name, first.extra)
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


def _extra_properties(row_name: str, extra: Mapping[str, str]) -> list[tuple[str, str]]:
    return [(f"{column}:{row_name}", value) for column, value in extra.items() if junit_name_ok(column)]


def metrics_block(props: Iterable[tuple[str, str]]) -> str:
    lines = ["[pytest-madengine metrics]"]
    lines += [f"{k}={v}" for k, v in props]
    return "\n".join(lines) + "\n"


def summary_rows(results: Iterable[ModelResult]) -> list[tuple[str, str, str, str, str]]:
    out = []
    for r in results:
        rows: list[Row | None] = list(r.rows) or [None]
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
