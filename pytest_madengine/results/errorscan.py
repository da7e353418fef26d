"""madengine's log error scan: a model whose output holds an error pattern fails, whatever
its exit code and performance (``RuntimeError: CUDA out of memory`` followed by a
``performance:`` line is a FAILURE, as in madengine, where the scan is on by default).

Keys, on the model card or in the context (the context wins; benign patterns add up):

* ``log_error_pattern_scan``: on unless false (``false``, ``0``, ``no``, ``off``);
* ``log_error_patterns``: a non-empty list replaces the default patterns;
* ``log_error_benign_patterns``: lines holding one of these never count (added to the
  built-in benign list).

Patterns are literal and case-sensitive, as madengine's. Unlike madengine, the scan reads
the script's output once, as it streams (one pass for all patterns, bounded memory, the
first hit kept), and never our own log lines (plans, notes, build output): madengine scans
its whole log, its own messages included. The built-in benign list is madengine's, regex
forms included. It errs the way madengine does: towards failing (a benchmark that prints
a handled ``Traceback (most recent call last)`` fails); add such lines to the benign list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_madengine.errors import UsageError

DEFAULT_PATTERNS: tuple[str, ...] = (
    "OutOfMemoryError", "HIP out of memory", "CUDA out of memory", "RuntimeError:", "AssertionError:",
    "ValueError:", "SystemExit", "failed (exitcode:", "Traceback (most recent call last)", "FAILED",
    "Exception:", "ImportError:", "ModuleNotFoundError:",
)
# madengine's built-in benign lines: metrics exporters, profiler chatter, ROCProf's glog lines.
BENIGN_LITERALS: tuple[str, ...] = (
    "FutureWarning", "Opened result file:", "SQLite3 generation ::", "rocpd_op:", "rpd_tracer:",
    "metrics-exporter", "[rocprofv3]",
)
BENIGN_REGEXES: tuple[str, ...] = (r"^\s*[EW]\d{8}\b",)
MAX_SHOWN = 300  # characters of the offending line kept in the reason


@dataclass(frozen=True)
class ErrorHit:
    pattern: str
    line_no: int
    text: str

    def reason(self) -> str:
        return f"error pattern {self.pattern!r} at line {self.line_no}: {self.text}"


class ErrorScan:
    """Fed each output line once; keeps the first hit. One compiled alternation for all
    patterns, so the cost per line does not grow with the number of patterns."""

    def __init__(self, patterns: Sequence[str], benign: Sequence[str] = ()) -> None:
        self.patterns = tuple(p for p in patterns if p)
        self._find = re.compile("|".join(map(re.escape, sorted(self.patterns, key=len, reverse=True)))) \
            if self.patterns else None
        literals = [b for b in (*BENIGN_LITERALS, *benign) if b]
        parts = [re.escape(b) for b in literals] + list(BENIGN_REGEXES)
        self._benign = re.compile("|".join(parts), re.M)
        self.hit: ErrorHit | None = None
        self.line_no = 0

    def feed(self, line: str) -> ErrorHit | None:
        self.line_no += 1
        if self.hit is not None or self._find is None:
            return None
        m = self._find.search(line)
        if m is None or self._benign.search(line):
            return None
        text = line.rstrip("\n")
        self.hit = ErrorHit(m.group(0), self.line_no, text[:MAX_SHOWN] + ("..." if len(text) > MAX_SHOWN else ""))
        return self.hit


_FALSE = {"false", "0", "no", "off", ""}


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE
    raise UsageError(f"{where} must be true or false, got {value!r}")


def _patterns(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable) and all(isinstance(v, str) for v in value):
        return list(value)
    raise UsageError(f"{where} must be a list of strings, got {value!r}")


def from_settings(card: Mapping[str, Any], context: Mapping[str, Any]) -> ErrorScan | None:
    """The scan a model gets (None when turned off). Raises UsageError naming the key."""
    on = True
    for source, where in ((card, "model card field"), (context, "context key")):
        if "log_error_pattern_scan" in source:
            on = _flag(source["log_error_pattern_scan"], f"{where} 'log_error_pattern_scan'")
    if not on:
        return None
    patterns = list(DEFAULT_PATTERNS)
    for source, where in ((card, "model card field"), (context, "context key")):
        given = _patterns(source.get("log_error_patterns"), f"{where} 'log_error_patterns'")
        if given:
            patterns = given
    benign = [*_patterns(card.get("log_error_benign_patterns"), "model card field 'log_error_benign_patterns'"),
              *_patterns(context.get("log_error_benign_patterns"), "context key 'log_error_benign_patterns'")]
    return ErrorScan(patterns, benign)
