"""Where a model's output goes: its log file, an optional live view, a bounded tail.

Memory stays bounded whatever the output size: lines are cut at
``MAX_LINE`` bytes, only the last ``tail_lines`` are kept, and performance
lines are scanned as they pass.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pytest_madengine.results.errorscan import ErrorScan
from pytest_madengine.results.metrics import PerfScanner

MAX_LINE = 64 * 1024


class OutputSink:
    def __init__(self, log_path: Path, *, live: Callable[[str], None] | None = None, tail_lines: int = 40,
                 mode: str = "w") -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = open(log_path, mode, encoding="utf-8", errors="replace")
        self._live = live
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self.scanner = PerfScanner()
        self.error_scan: ErrorScan | None = None  # set by the session: the log error scan, when on
        self._lock = threading.Lock()
        self.lines = 0

    def note(self, text: str) -> None:
        """A line of ours (not the model's) in the log, marked so it is not mistaken for output."""
        self.write(f"[pytest-madengine] {text}\n", scan=False)

    def write(self, line: str, *, scan: bool = True, perf: bool = True) -> None:
        """``perf=False``: scanned for error patterns but never read as the run's performance
        (a SLURM worker node's output: node 0 reports the run's figure)."""
        if not line.endswith("\n"):
            line += "\n"
        with self._lock:
            if self._log.closed:  # a straggler writing after the run ended
                return
            self._log.write(line)
            self._log.flush()
            self._tail.append(line.rstrip("\n"))
            self.lines += 1
            if scan:
                if perf:
                    self.scanner.feed(line)
                if self.error_scan is not None:
                    self.error_scan.feed(line)
        if self._live is not None:
            self._live(line)

    def pump(self, stream: BinaryIO) -> None:
        """Copy a child's byte stream line by line until EOF."""
        while True:
            chunk = stream.readline(MAX_LINE)
            if not chunk:
                break
            self.write(chunk.decode("utf-8", errors="replace"))

    def tail(self, n: int | None = None) -> list[str]:
        with self._lock:
            items = list(self._tail)
        return items if n is None else items[-n:]

    def close(self) -> None:
        with self._lock:
            if not self._log.closed:
                self._log.close()
