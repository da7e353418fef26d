"""Where a model's output goes: its log file, an optional live view, a bounded tail.

Memory stays bounded whatever the output size: lines are cut at
``MAX_LINE`` bytes, only the last ``tail_lines`` are kept, and performance
lines are scanned as they pass. The log stays bounded per line too: of one
output line only the first ``MAX_LOG_LINE`` bytes are written, the rest is
counted (a model printing gigabytes without a newline must not fill the disk).
A log that cannot be written (its file system full) stops being written, but the
output is still drained, scanned and tailed, so the model never blocks on it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from pytest_madengine.results.errorscan import ErrorScan
from pytest_madengine.results.metrics import PerfScanner

MAX_LINE = 64 * 1024
MAX_LOG_LINE = 1024 * 1024
READ_CHUNK = 1024 * 1024
PIPE_SIZE = 1024 * 1024
# Deleting every byte but the UTF-8 continuation bytes (0x80-0xBF) leaves those to count.
_NOT_CONTINUATION = bytes(b for b in range(256) if not 0x80 <= b <= 0xBF)


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
        self._ended = False
        self._open_line = 0  # characters of the model's current line so far (pieces without a newline)
        self._cut = 0  # characters of the current line not logged
        self.lines = 0
        self.log_error = ""  # why the log could not be written ("" while it can)

    def note(self, text: str) -> None:
        """A line of ours (not the model's) in the log, marked so it is not mistaken for output."""
        self.write(f"[pytest-madengine] {text}\n", scan=False)

    def write(self, line: str, *, scan: bool = True, perf: bool = True) -> None:
        """``line``: a whole line, or (without its newline) a piece of a longer one.
        ``perf=False``: scanned for error patterns but never read as the run's performance
        (a SLURM worker node's output: node 0 reports the run's figure)."""
        complete = line.endswith("\n")
        text = line if complete else line + "\n"
        with self._lock:
            if self._ended:  # a straggler writing after the run ended
                return
            keep = True
            if scan:
                if self._open_line >= MAX_LOG_LINE:
                    keep, self._cut = False, self._cut + len(line) - complete
                self._open_line = 0 if complete else self._open_line + len(line)
            if keep:
                self._to_log(text)
                self._tail.append(text.rstrip("\n"))
                self.lines += 1
                if scan:
                    if perf:
                        self.scanner.feed(text)
                    if self.error_scan is not None:
                        self.error_scan.feed(text)
            if scan and complete:
                self._report_cut()
        if keep and self._live is not None:
            self._live(text)

    def _report_cut(self) -> None:
        if self._cut:
            self._to_log(f"[pytest-madengine] the line above is cut at {MAX_LOG_LINE} bytes: "
                         f"{self._cut} more characters of it are not logged\n")
            self._cut = 0

    def _to_log(self, text: str) -> None:
        if self.log_error:
            return
        try:
            self._log.write(text)
            self._log.flush()
        except OSError as exc:
            self.log_error = f"cannot write {self.log_path}: {exc.strerror or exc}"
            self._close_log()

    def _close_log(self) -> None:
        try:
            self._log.close()
        except OSError as exc:  # the last flush, when the file system is full
            self.log_error = self.log_error or f"cannot write {self.log_path}: {exc.strerror or exc}"

    def pump(self, stream: BinaryIO) -> None:
        """Copy a child's byte stream line by line until EOF.

        Read in large chunks and split here: ``readline`` on a pipe refills an 8 KiB buffer per
        call, which held a line without a newline to ~0.4 GiB/s."""
        read = getattr(stream, "read1", stream.read)
        _widen_pipe(stream)
        feed = LineFeed(self)
        while True:
            chunk = read(READ_CHUNK)
            if not chunk:
                break
            feed.feed(chunk)
        feed.end()

    def end_line(self) -> None:
        """A stream ended inside a line: what comes next (another file) starts a line of its own."""
        with self._lock:
            self._open_line = 0
            if not self._ended:
                self._report_cut()

    def _dropping(self) -> bool:
        with self._lock:
            return self._open_line >= MAX_LOG_LINE and not self._ended

    def _drop(self, piece: bytes | bytearray) -> None:
        """Part of an over-long line, not logged: counted in characters (UTF-8 continuation
        bytes are not characters of their own) without decoding it."""
        chars = len(piece) if piece.isascii() else len(piece) - len(piece.translate(None, _NOT_CONTINUATION))
        with self._lock:
            self._open_line += chars
            self._cut += chars

    def tail(self, n: int | None = None) -> list[str]:
        with self._lock:
            items = list(self._tail)
        return items if n is None else items[-n:]

    def close(self) -> None:
        with self._lock:
            if not self._ended:
                self._ended = True
                self._report_cut()
                self._close_log()


class LineFeed:
    """Bytes in chunks of any size (a pipe, a Docker attach stream, a SLURM job's output file)
    -> the sink's lines: the one rule for every executor. A line is written in pieces of at
    most ``MAX_LINE`` bytes; past the log's cap of a line (``MAX_LOG_LINE``) the rest of it is
    counted and dropped as raw bytes, never decoded, scanned or tailed, so gigabytes on one
    line pass at the reader's speed in bounded memory. ``emit`` (default ``sink.write``) gets
    each piece; a caller's wrapper may add a prefix or filter."""

    def __init__(self, sink: OutputSink, emit: Callable[[str], None] | None = None) -> None:
        self._sink = sink
        self._emit = emit or sink.write
        self._buf = bytearray()  # a partial line between chunks (a bytearray: appending is not quadratic)

    def feed(self, chunk: bytes) -> None:
        buf = self._buf
        if buf:
            buf += chunk
            data: bytes | bytearray = buf
        else:
            data = chunk  # the usual case, nothing pending: no copy
        start = 0
        while start < len(data):
            if self._sink._dropping():
                nl = data.find(b"\n", start)
                self._sink._drop(data[start:] if nl == -1 else data[start:nl])
                if nl == -1:
                    start = len(data)
                    break
                self._sink.write("\n")  # the line's end: the cut is reported, the next line logged
                start = nl + 1
                continue
            nl = data.find(b"\n", start, start + MAX_LINE)
            if nl != -1:
                end = nl + 1
            elif len(data) - start >= MAX_LINE:
                end = start + MAX_LINE
            else:
                break  # a partial piece: wait for its newline, MAX_LINE bytes, or the end
            self._emit(data[start:end].decode("utf-8", errors="replace"))
            start = end
        if data is buf:
            del buf[:start]
        else:
            buf += data[start:]

    def end(self) -> None:
        """The stream ended: a last line without its newline is written."""
        if self._buf:
            self._emit(self._buf.decode("utf-8", errors="replace"))
            self._buf = bytearray()
        self._sink.end_line()


def file_lines(path: Path, max_line: int = MAX_LINE) -> Iterator[str]:
    """The lines of a file (without their newlines), read lazily in bounded memory: a line is
    cut at ``max_line`` bytes and the rest of it skipped undecoded. An unreadable file has
    no lines (and one that stops being readable, no more)."""
    try:
        fh = open(path, "rb")
    except OSError:
        return
    with fh:
        buf = bytearray()
        skipping = False  # inside the rest of a cut line
        while True:
            try:
                chunk = fh.read(READ_CHUNK)
            except OSError:
                return
            if not chunk:
                break
            buf += chunk
            start = 0
            while start < len(buf):
                nl = buf.find(b"\n", start)
                if skipping:
                    if nl == -1:
                        start = len(buf)
                        break
                    skipping, start = False, nl + 1
                    continue
                if nl != -1 and nl - start <= max_line:
                    yield _text(buf[start:nl])
                    start = nl + 1
                elif len(buf) - start >= max_line:
                    yield _text(buf[start:start + max_line])
                    skipping, start = True, start + max_line
                else:
                    break  # a partial line: wait for more
            del buf[:start]
        if buf and not skipping:
            yield _text(buf)


def _text(raw: bytes | bytearray) -> str:
    return raw.decode("utf-8", errors="replace").removesuffix("\r")


def _widen_pipe(stream: BinaryIO) -> None:
    """A 1 MiB pipe buffer instead of Linux's 64 KiB: 16 times fewer wake-ups of the reader
    and the writer for a model that prints fast. Best effort (not a pipe, not Linux, over the limit)."""
    try:
        import fcntl

        fcntl.fcntl(stream.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
    except (OSError, ValueError, AttributeError, ImportError):
        pass
