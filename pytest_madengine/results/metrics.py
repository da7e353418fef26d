"""Reading a model's results the way madengine 2.x does, without ever lying about them.

Pure functions and one small streaming class: no pytest, no processes, no I/O except
reading a ``multiple_results`` CSV.

What madengine 2.x does (ROCm/madengine, checked against its source):

* ``deployment/base.py`` defines ``PERFORMANCE_LOG_PATTERN`` (2.0.1 and later)::

      r"performance:\\s+"
      r"([+\\-]?(?:[0-9]+\\.?[0-9]*|\\.[0-9]+)(?:[eE][+\\-]?[0-9]+)?)"
      r"(?:,?\\s*/[a-zA-Z]+\\s*,?|,)?\\s+"
      r"([^\\s,]+)"

  ``execution/container_runner.py`` (and ``execution/run_reporting.py``) apply it with
  ``re.search`` to the whole log and keep the FIRST match: value ``group(1)``, metric
  ``group(2)``. The pattern is case-sensitive, is not anchored (any text may come before
  ``performance:``, even ``myperformance:``), needs whitespace after the colon, and
  needs a metric after the value (``performance: 100.5`` alone is not a result).
* If no line matches, a HuggingFace fallback is tried on the whole log:
  ``r'train_samples_per_second[\\'"\\s:=]+([0-9][0-9.eE+-]*)'``, reported as metric
  ``samples_per_second``.
* A ``multiple_results`` CSV (``reporting/update_perf_csv.py::handle_multiple_results``)
  is read with pandas, header names stripped (madengine issue #115), columns
  ``model``, ``performance`` and ``metric`` required ("<file> file is missing the
  <col> column"), each row named ``model_name + "_" + str(row model)``, status
  SUCCESS when the performance cell is not NaN; other columns go to perf.csv as they are
  (the perf.csv header grows by those columns).
* Multi-node aggregation (``deployment/base.py::_determine_aggregation_method``) picks
  sum/average/max from words in the metric name and **sums unknown metrics**.

Where we differ, on purpose:

* Lines are read one at a time (1 GB logs are streamed, never loaded). madengine's
  ``\\s+`` may cross a newline, so for it ``performance: 100`` followed by a line
  starting with ``Epoch`` is "100 Epoch"; here a performance line must carry its metric
  on the same line. Such dangling lines are reported by :attr:`PerfScanner.incomplete`.
* ``performance: NA metric`` (also ``N/A``, ``nan``, ``inf``, ``-inf``, ``Infinity``,
  ``None``, ``null``; any case) is a performance line whose value is ``None``: a
  failure, never zero. madengine skips it and may report a later number instead; we
  keep the first performance line printed, whatever it holds, and say so in a warning.
* A number that parses to ``inf`` or ``nan`` (``1e999``) is not a measurement: value
  ``None`` (raw text kept).
* The value regex is madengine's, made atomic (a look-ahead plus back-reference, which
  matches the same text) so that a pathological line such as ``performance: 111...``
  costs linear, not quadratic, time.
* Aggregating across ranks/nodes never sums an unknown metric: see
  :func:`aggregation_rule`.
"""

from __future__ import annotations

import csv
import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pytest_madengine.errors import MetricsError, UsageError

__all__ = [
    "MADENGINE_PERFORMANCE_PATTERN",
    "MADENGINE_HF_PATTERN",
    "HF_METRIC",
    "MAX_KEPT_LINES",
    "PerfLine",
    "ResultRow",
    "Aggregate",
    "PerfScanner",
    "find_performance_lines",
    "choose_result",
    "parse_multiple_results",
    "parse_number",
    "PERF_CSV_COLUMNS",
    "RESERVED_EXTRA_NAMES",
    "EXTRA_PREFIX",
    "is_reserved_extra_name",
    "safe_extra",
    "aggregation_rule",
    "aggregate",
    "direction",
]

# --------------------------------------------------------------------------------------
# Patterns
# --------------------------------------------------------------------------------------

#: madengine's own pattern, verbatim (deployment/base.py, 2.0.1+). Kept for reference and
#: for the tests that prove :data:`_PERF_RE` matches exactly what it matches.
MADENGINE_PERFORMANCE_PATTERN = (
    r"performance:\s+"
    r"([+\-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+\-]?[0-9]+)?)"
    r"(?:,?\s*/[a-zA-Z]+\s*,?|,)?\s+"
    r"([^\s,]+)"
)

#: madengine's HuggingFace Trainer fallback, verbatim (execution/container_runner.py).
MADENGINE_HF_PATTERN = r"train_samples_per_second[\'\"\s:=]+([0-9][0-9.eE+-]*)"
HF_METRIC = "samples_per_second"

_NUMBER = r"[+\-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+\-]?[0-9]+)?"
# Between value and metric: an optional unit suffix such as "/s" and/or a comma.
_SEPARATOR = r"(?:,?\s*/[a-zA-Z]+\s*,?|,)?"
# Values a script prints when it has no number. Whole tokens only: the separator or
# whitespace must follow, so "nanoseconds" or "information" never match.
_NON_NUMBER = r"(?i:n/?a|[+\-]?nan|[+\-]?inf(?:inity)?|none|null)"

# Same language as MADENGINE_PERFORMANCE_PATTERN; "(?=(X))\1" makes the number atomic
# (no backtracking into it), which cannot change a match since the separator can never
# start with a digit, ".", "e" or a sign.
_PERF_RE = re.compile(
    r"performance:\s+(?=(?P<num>" + _NUMBER + r"))(?P=num)" + _SEPARATOR + r"\s+(?P<metric>[^\s,]+)"
)
_NA_RE = re.compile(r"performance:\s+(?P<num>" + _NON_NUMBER + r")" + _SEPARATOR + r"\s+(?P<metric>[^\s,]+)")
# A performance line cut short: the value (or nothing) and then the end of the line.
# madengine would read the next line's first word as the metric.
# Searched in the line with trailing whitespace removed.
_INCOMPLETE_RE = re.compile(
    r"performance:(?:\s+(?:(?=(?P<num>" + _NUMBER + r"))(?P=num)|" + _NON_NUMBER + r")" + _SEPARATOR + r")?$"
)
_HF_RE = re.compile(MADENGINE_HF_PATTERN)
_STRICT_NUMBER_RE = re.compile(r"(?=(?P<num>" + _NUMBER + r"))(?P=num)")

_PERF_KEY = "performance:"
_HF_KEY = "train_samples_per_second"

#: How many performance lines a :class:`PerfScanner` keeps by default.
MAX_KEPT_LINES = 1000
_MAX_INCOMPLETE = 100


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PerfLine:
    """One ``performance:`` line of a model's output."""

    value: float | None  # None when the value is not a finite number ("NA", "nan", "1e999")
    raw_value: str  # the value as printed
    metric: str
    line_no: int  # 1-based line in the text


@dataclass(frozen=True)
class ResultRow:
    """One result: a single model's, or one row of its multiple_results CSV."""

    name: str  # "<model>" for a single result, "<model>_<row model>" for multiple_results rows
    performance: float | None  # None: not a number -> the caller fails it
    raw_performance: str
    metric: str
    # Other CSV columns, in file order, values as text; names made safe by :func:`safe_extra`.
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Aggregate:
    """Values from several ranks/nodes combined into one."""

    value: float
    rule: str  # "mean" | "sum" | "max" | "min" | "rank0"
    n: int  # how many values were combined


def parse_number(text: str) -> float | None:
    """A finite float from ``text`` written in madengine's number syntax, else None.

    Accepts an optional sign, ``12``, ``12.``, ``12.5``, ``.5`` and an exponent; surrounding
    whitespace is ignored. Rejects what Python's float() would also take but a benchmark
    must not report: ``nan``, ``inf``, ``1_000``, and values that overflow to infinity.
    """
    text = text.strip()
    if _STRICT_NUMBER_RE.fullmatch(text) is None:
        return None
    value = float(text)
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------------------
# Scanning output
# --------------------------------------------------------------------------------------


def _match_line(line: str, line_no: int) -> PerfLine | None:
    m = _PERF_RE.search(line)
    na = _NA_RE.search(line)
    if na is not None and (m is None or na.start() < m.start()):
        return PerfLine(None, na.group("num"), na.group("metric"), line_no)
    if m is None:
        return None
    raw = m.group("num")
    return PerfLine(parse_number(raw), raw, m.group("metric"), line_no)


def _match_hf(line: str, line_no: int) -> PerfLine | None:
    m = _HF_RE.search(line)
    if m is None:
        return None
    raw = m.group(1).strip()
    return PerfLine(parse_number(raw), raw, HF_METRIC, line_no)


class PerfScanner:
    """Incremental scanner for a log being streamed: call :meth:`feed` once per line.

    * :attr:`lines`: the performance lines seen, in order, at most ``max_lines`` of them
      (``None``: no bound); :attr:`count`: how many there were in all.
    * :attr:`hf`: the first HuggingFace ``train_samples_per_second`` value, or None.
      madengine uses it only when no line matches its performance pattern.
    * :attr:`incomplete`: line numbers (first 100) of lines holding ``performance:`` with
      no metric after the value; madengine would take the next line's first word.
    """

    def __init__(self, max_lines: int | None = MAX_KEPT_LINES) -> None:
        if max_lines is not None and max_lines < 0:
            raise ValueError("max_lines must be >= 0 or None")
        self.max_lines = max_lines
        self._lines: list[PerfLine] = []
        self.count = 0
        self.line_count = 0
        self.hf: PerfLine | None = None
        self.incomplete: list[int] = []
        self.incomplete_count = 0

    def feed(self, line: str | bytes) -> PerfLine | None:
        """Scan one line (a trailing newline is fine); returns its performance line, if any."""
        if isinstance(line, bytes):
            line = line.decode("utf-8", errors="replace")
        self.line_count += 1
        found = None
        if _PERF_KEY in line:
            found = _match_line(line, self.line_count)
            if found is not None:
                self.count += 1
                if self.max_lines is None or len(self._lines) < self.max_lines:
                    self._lines.append(found)
            elif _INCOMPLETE_RE.search(line.rstrip()) is not None:
                self.incomplete_count += 1
                if len(self.incomplete) < _MAX_INCOMPLETE:
                    self.incomplete.append(self.line_count)
        if self.hf is None and _HF_KEY in line:
            self.hf = _match_hf(line, self.line_count)
        return found

    def feed_all(self, lines: Iterable[str | bytes]) -> PerfScanner:
        for line in lines:
            self.feed(line)
        return self

    @property
    def lines(self) -> list[PerfLine]:
        return list(self._lines)

    @property
    def truncated(self) -> bool:
        """True when more performance lines were seen than kept."""
        return self.count > len(self._lines)


def find_performance_lines(lines: Iterable[str | bytes], *, limit: int | None = None) -> list[PerfLine]:
    """Every line matching madengine's performance pattern, plus ``performance: NA metric``-style
    lines (value None), in order. ``lines`` is consumed lazily (a file object works);
    ``limit`` caps how many are returned (all by default)."""
    return PerfScanner(max_lines=limit).feed_all(lines).lines


def _shown(p: PerfLine) -> str:
    return f"{p.raw_value} {p.metric} (line {p.line_no})"


def choose_result(
    model_name: str, perf_lines: Sequence[PerfLine], *, total: int | None = None
) -> tuple[ResultRow | None, list[str]]:
    """The model's single result: the FIRST performance line, as madengine takes it.

    Returns ``(row, warnings)``; ``row`` is None when there are no lines. A first line whose
    value is not a number gives a row with ``performance=None``: the caller fails it
    (madengine would skip such a line and take a later number; we say so in a warning).
    ``total`` is how many lines were seen when ``perf_lines`` is a bounded sample
    (:attr:`PerfScanner.count`).
    """
    if not perf_lines:
        return None, []
    first = perf_lines[0]
    row = ResultRow(name=model_name, performance=first.value, raw_performance=first.raw_value,
                    metric=first.metric, extra={})
    warnings: list[str] = []

    distinct: dict[tuple[object, str], PerfLine] = {}
    for p in perf_lines:
        key = (p.value if p.value is not None else p.raw_value.lower(), p.metric)
        distinct.setdefault(key, p)
    if len(distinct) > 1:
        more = "" if total is None or total <= len(perf_lines) else " (among the first kept)"
        warnings.append(f"{len(distinct)} different performance values printed{more}; using the first "
                        f"(madengine's rule): {_shown(first)}")
    metrics = list(dict.fromkeys(p.metric for p in perf_lines))
    if len(metrics) > 1:
        warnings.append("performance lines name different metrics: " + ", ".join(metrics[:10])
                        + (", ..." if len(metrics) > 10 else ""))

    if first.value is None:
        later = next((p for p in perf_lines if p.value is not None), None)
        if later is not None:
            warnings.append(f"the first performance line is not a number: {_shown(first)}; madengine would skip "
                            f"it and report {_shown(later)}, but a value that is not a number fails here")
    else:
        bad = [p for p in perf_lines if p.value is None]
        if bad:
            warnings.append(f"{len(bad)} later performance line(s) are not a number, first: {_shown(bad[0])}")

    if total is not None and total > len(perf_lines):
        warnings.append(f"{total} performance lines printed; only the first {len(perf_lines)} were examined")
    return row, warnings


# --------------------------------------------------------------------------------------
# multiple_results CSV
# --------------------------------------------------------------------------------------

_REQUIRED = ("model", "performance", "metric")

#: perf.csv's own columns (madengine 2.x order); ``report.PERF_COLUMNS`` is this tuple.
PERF_CSV_COLUMNS: tuple[str, ...] = (
    "model", "n_gpus", "nnodes", "gpus_per_node", "training_precision", "pipeline", "args", "tags",
    "docker_file", "base_docker", "docker_sha", "docker_image", "git_commit", "machine_name",
    "deployment_type", "launcher", "gpu_architecture", "performance", "metric", "relative_change",
    "status", "build_duration", "test_duration", "dataname", "data_provider_type", "data_size",
    "data_download_duration", "build_number", "additional_docker_run_options",
)

#: Names an extra ``multiple_results`` column may not keep (see :func:`safe_extra`): perf.csv's
#: own columns, and the per-row JUnit property names (``performance:<row>``, ``metric:<row>``,
#: and the baseline's ``baseline:<row>``, ``delta_pct:<row>``, ``baseline_note:<row>``), since an
#: extra cell is written to JUnit as ``<column>:<row>``.
RESERVED_EXTRA_NAMES: frozenset[str] = frozenset(PERF_CSV_COLUMNS) | {
    "performance", "metric", "baseline", "delta_pct", "baseline_note"}

#: What a clashing extra column name is prefixed with.
EXTRA_PREFIX = "mr_"


def is_reserved_extra_name(name: str) -> bool:
    """Whether an extra column named ``name`` would clobber one of ours: it is in
    :data:`RESERVED_EXTRA_NAMES`, or it is such a name followed by ``:`` (``metric:p50``
    would read back from JUnit as the metric of a row named ``p50:<row>``)."""
    return name in RESERVED_EXTRA_NAMES or name.partition(":")[0] in RESERVED_EXTRA_NAMES


def safe_extra(extra: Mapping[str, object]) -> dict[str, str]:
    """Extra columns (``name -> cell``) made safe to put next to perf.csv's own columns.

    The rule, applied to each column in order:

    * the name is stripped of surrounding whitespace; a column whose name is then empty is
      dropped (it cannot be a perf.csv column);
    * a name that clashes, i.e. :func:`is_reserved_extra_name` (``status``, ``n_gpus``,
      ``performance:x``, ...), is kept under ``mr_<name>``; if that name is itself one of the
      other columns' names (or taken by an earlier column), ``mr_`` is prefixed again until it is
      unique (``status`` next to ``mr_status`` becomes ``mr_mr_status``). A name that repeats
      once stripped is made unique the same way;
    * values are kept as text (``None`` becomes ``""``), never parsed.

    Order is kept, and the result is a fixed point: ``safe_extra(safe_extra(x)) == safe_extra(x)``.
    """
    raw = [(str(k).strip(), "" if v is None else str(v)) for k, v in extra.items()]
    names = {k for k, _ in raw}
    out: dict[str, str] = {}
    for name, value in raw:
        if not name:
            continue
        new = name
        while is_reserved_extra_name(new) or new in out or (new != name and new in names):
            new = EXTRA_PREFIX + new
        out[new] = value
    return out


def parse_multiple_results(path: Path, model_name: str) -> list[ResultRow]:
    """Read a model's ``multiple_results`` CSV into rows named ``<model_name>_<row model>``.

    Columns ``model``, ``performance``, ``metric`` are required; header names and values are
    stripped of surrounding whitespace (madengine issue #115); other columns are kept, in file
    order, in ``extra``, values as text: madengine appends them to perf.csv. Their names follow
    :func:`safe_extra`: columns with an empty header are dropped, and a name that clashes with
    a perf.csv column or a per-row JUnit property (``status``, ``n_gpus``, ``baseline``) is
    kept as ``mr_<name>``. A performance cell that is not a finite number (empty, ``NA``,
    ``nan``, ``1,234``, ``95%``) gives ``performance=None``: the caller fails that row. Blank
    rows are skipped.

    Raises :class:`MetricsError` when the file is missing or unreadable, a required column is
    missing, a column name repeats, there are no result rows, a row has more cells than the
    header, or a row has no model name.
    """
    path = Path(path)
    shown = f"'{path.name}'"
    if not path.is_file():
        why = "is a directory, not a file" if path.is_dir() else "was not written by the script"
        raise MetricsError(f"multiple_results file {shown} {why} (expected at {path})")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise MetricsError(f"multiple_results file {shown} is empty: expected a header "
                                   f"'model,performance,metric' and one row per result ({path})")
            names = [h.strip() for h in header]
            seen: set[str] = set()
            dupes: list[str] = []
            for n in names:
                if n and n in seen:
                    dupes.append(n)
                seen.add(n)
            if dupes:
                raise MetricsError(f"multiple_results file {shown} repeats column(s) "
                                   f"{', '.join(repr(d) for d in dict.fromkeys(dupes))} in its header")
            missing = [c for c in _REQUIRED if c not in names]
            if missing:
                raise MetricsError(
                    f"multiple_results file {shown} is missing the required column(s) "
                    f"{', '.join(repr(c) for c in missing)}; its header is {', '.join(repr(n) for n in names)} "
                    f"(needed: model, performance, metric)")
            idx = {n: i for i, n in enumerate(names) if n}
            rows: list[ResultRow] = []
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) > len(names):
                    raise MetricsError(f"multiple_results file {shown} line {reader.line_num} has {len(cells)} "
                                       f"cells but the header has {len(names)} columns")
                values = [c.strip() for c in cells] + [""] * (len(names) - len(cells))
                row_model = values[idx["model"]]
                if not row_model:
                    raise MetricsError(f"multiple_results file {shown} line {reader.line_num} has an empty "
                                       f"'model' cell, so its result cannot be named")
                raw = values[idx["performance"]]
                extra = safe_extra({n: values[i] for n, i in idx.items() if n not in _REQUIRED})
                rows.append(ResultRow(name=f"{model_name}_{row_model}", performance=parse_number(raw),
                                      raw_performance=raw, metric=values[idx["metric"]], extra=extra))
    except UnicodeDecodeError as exc:
        raise MetricsError(f"multiple_results file {shown} is not UTF-8 text ({exc.reason} at byte {exc.start})") \
            from exc
    except csv.Error as exc:
        raise MetricsError(f"multiple_results file {shown} is not a readable CSV: {exc}") from exc
    except OSError as exc:
        raise MetricsError(f"multiple_results file {shown} cannot be read: {exc.strerror or exc}") from exc
    if not rows:
        raise MetricsError(f"multiple_results file {shown} has a header but no result rows")
    return rows


# --------------------------------------------------------------------------------------
# Aggregation and direction
# --------------------------------------------------------------------------------------

_AGG_OVERRIDES = ("mean", "sum", "max", "min", "rank0")
_DIRECTIONS = ("higher", "lower")

# Word lists for metric names, matched against whole lower-case words.
_DEVICE = frozenset({"gpu", "gpus", "device", "devices", "gcd", "gcds", "rank", "ranks", "node", "nodes",
                     "card", "cards", "chip", "chips", "accelerator", "accelerators", "worker", "workers",
                     "replica", "replicas", "proc", "process", "xcd"})
_TIME = frozenset({"s", "sec", "secs", "second", "seconds", "ms", "msec", "msecs", "millisecond", "milliseconds",
                   "us", "usec", "usecs", "microsecond", "microseconds", "ns", "nsec", "nanosecond", "nanoseconds",
                   "min", "mins", "minute", "minutes", "h", "hr", "hrs", "hour", "hours", "day", "days"})
_TIME_WORDS = frozenset({"time", "times", "duration", "latency", "latencies", "ttft", "tpot", "itl", "e2el",
                         "runtime", "elapsed", "walltime", "wallclock"})
_QUALITY_HIGHER = frozenset({"accuracy", "acc", "top1", "top5", "f1", "precision", "recall", "bleu", "rouge",
                             "auc", "map", "score"})
_QUALITY_LOWER = frozenset({"loss", "losses", "error", "errors", "err", "wer", "cer", "perplexity", "ppl", "mse",
                            "mae", "rmse"})
_RATE_WORDS = frozenset({"throughput", "qps", "fps", "tps", "rps", "ips", "bandwidth", "bw", "flops", "tflops",
                         "gflops", "pflops", "tflop", "gflop", "gbps", "mbps", "kbps", "tbps", "iops"})
_MEMORY = frozenset({"mem", "memory", "bytes", "byte", "gb", "mb", "kb", "tb", "gib", "mib", "kib", "tib",
                     "vram", "hbm", "rss"})
_TOTAL = frozenset({"total", "sum", "aggregate", "overall", "global"})
_INTENSIVE_HIGHER = frozenset({"percent", "pct", "util", "utilization", "utilisation", "mfu", "hfu",
                               "efficiency", "speedup", "scaling", "ratio"})

_CAMEL_RE = re.compile(r"(?<=[a-z0-9])(?=[A-Z][a-z])")  # "samplesPerSecond", not "MiB"
_WORD_RE = re.compile(r"[a-z0-9]+")


def _split_metric(metric: str) -> tuple[list[str], list[str]]:
    """(numerator words, denominator words): "tok_per_s_per_gpu" -> ([tok], [s, gpu]),
    "samples/sec" -> ([samples], [sec]), "ms/iter" -> ([ms], [iter])."""
    text = _CAMEL_RE.sub("_", metric).lower()
    parts = text.split("/")
    num: list[str] = []
    den: list[str] = []
    for i, part in enumerate(parts):
        words = _WORD_RE.findall(part)
        target = num if i == 0 else den
        for w in words:
            if w == "per":
                target = den
            elif w.startswith("per") and w[3:] in _TIME | _DEVICE:  # "persec", "pergpu"
                target = den
                den.append(w[3:])
            else:
                target.append(w)
    return num, den


def _classify(metric: str) -> str:
    """One of: device-rate, device, quality-higher, quality-lower, time, rate, memory, total,
    intensive, unknown."""
    num, den = _split_metric(metric)
    words = set(num)
    if any(w in _DEVICE for w in den):
        return "device"
    if words & _QUALITY_LOWER:
        return "quality-lower"
    if words & _QUALITY_HIGHER:
        return "quality-higher"
    if words & (_TIME | _TIME_WORDS):
        return "time"
    if any(w in _TIME for w in den) or words & _RATE_WORDS:
        return "rate"
    if words & _MEMORY:
        return "memory"
    if words & _TOTAL:
        return "total"
    if words & _INTENSIVE_HIGHER:
        return "intensive"
    return "unknown"


def aggregation_rule(metric: str, override: str | None = None) -> str:
    """How to combine one metric's values reported by several ranks or nodes.

    The metric name is split into words (``_ - / space``, camelCase); words after ``per`` or
    after a ``/`` are the denominator. First rule that applies:

    ========================================================  ========
    metric                                                    rule
    ========================================================  ========
    ``override`` (mean, sum, max, min, rank0)                 override
    per-device: denominator gpu/device/gcd/rank/node/...       mean
    (``tok_per_s_per_gpu``, ``samples/sec/gpu``,
    ``tflops_per_device``)
    quality: accuracy, acc, top1, f1, bleu, score, loss,       mean
    error, wer, perplexity, ...
    time: ms, s, sec, seconds, us, min, ... or time,           mean
    duration, latency, ttft, tpot, runtime (``latency_ms``,
    ``step_time``, ``ms/iter``)
    throughput: time in the denominator (``samples_per_        sum
    second``, ``tokens/sec``, ``img/s``, ``GB/s``) or
    throughput, qps, fps, tps, bandwidth, flops, tflops
    memory: mem, memory, bytes, GB, MB, GiB, MiB, vram, hbm    max
    totals: total, sum, overall, global                        sum
    intensive: percent, util, mfu, efficiency, speedup, ratio  mean
    anything else                                              mean
    ========================================================  ========

    Unknown metrics are averaged, not summed: madengine sums them, which multiplies a
    per-GPU or already-global figure by the number of nodes.
    """
    if override is not None:
        rule = override.strip().lower()
        if rule not in _AGG_OVERRIDES:
            raise UsageError(f"aggregation override {override!r} is not one of {', '.join(_AGG_OVERRIDES)}")
        return rule
    kind = _classify(metric)
    if kind in ("rate", "total"):
        return "sum"
    if kind == "memory":
        return "max"
    return "mean"


def aggregate(values: Sequence[float], metric: str, override: str | None = None) -> Aggregate:
    """Combine values from several ranks/nodes by :func:`aggregation_rule`.

    Raises :class:`MetricsError` when there are no values or one is not a finite number
    (a failed rank must fail the result, not vanish from it).
    """
    rule = aggregation_rule(metric, override)
    vals = list(values)
    if not vals:
        raise MetricsError(f"no values to aggregate for metric {metric!r}")
    for i, v in enumerate(vals):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise MetricsError(f"value {i + 1} of {len(vals)} for metric {metric!r} is not a number: {v!r}")
    if rule == "sum":
        value = math.fsum(vals)
    elif rule == "mean":
        value = math.fsum(vals) / len(vals)
    elif rule == "max":
        value = max(vals)
    elif rule == "min":
        value = min(vals)
    else:  # rank0
        value = vals[0]
    return Aggregate(value=float(value), rule=rule, n=len(vals))


def direction(metric: str, override: str | None = None) -> str:
    """Whether a higher or a lower value is better: "higher" or "lower".

    ``override`` ("higher"/"lower") wins. Otherwise: loss, error, wer, perplexity -> lower;
    accuracy, f1, bleu, score -> higher; time and latency (``ms``, ``latency``,
    ``ms/iter``) -> lower; throughput (per device or not) -> higher; memory -> lower;
    totals, utilisation, efficiency, speedup -> higher; unknown -> higher.
    """
    if override is not None:
        d = override.strip().lower()
        if d not in _DIRECTIONS:
            raise UsageError(f"metric direction {override!r} is not 'higher' or 'lower'")
        return d
    kind = _classify(metric)
    if kind == "device":
        # A per-device figure is better higher unless it is a time or a loss per device.
        num, den = _split_metric(metric)
        words = set(num)
        is_rate = any(w in _TIME for w in den) or words & _RATE_WORDS
        if words & (_QUALITY_LOWER | _TIME | _TIME_WORDS) or (words & _MEMORY and not is_rate):
            return "lower"
        return "higher"
    if kind in ("quality-lower", "time", "memory"):
        return "lower"
    return "higher"
