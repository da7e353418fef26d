"""OutputSink: the log stays bounded per line and survives a full file system."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from pytest_madengine.output import MAX_LINE, MAX_LOG_LINE, OutputSink


def test_a_huge_line_is_cut_in_the_log_and_the_next_lines_still_count(tmp_path: Path) -> None:
    sink = OutputSink(tmp_path / "m.log")
    stream = io.BytesIO(b"x" * (MAX_LOG_LINE * 5) + b"\nperformance: 7 x\n")
    sink.pump(stream)
    sink.close()
    text = (tmp_path / "m.log").read_text()
    assert len(text) < MAX_LOG_LINE + 2 * MAX_LINE
    assert f"cut at {MAX_LOG_LINE} bytes: {MAX_LOG_LINE * 4} more characters" in text
    assert text.endswith("performance: 7 x\n")
    assert sink.scanner.count == 1
    assert sink.tail(1) == ["performance: 7 x"]


def test_a_cut_at_the_end_of_the_output_is_reported_on_close(tmp_path: Path) -> None:
    sink = OutputSink(tmp_path / "m.log")
    sink.pump(io.BytesIO(b"y" * (MAX_LOG_LINE + 3 * MAX_LINE)))
    sink.close()
    assert "more characters of it are not logged" in (tmp_path / "m.log").read_text()


def test_a_full_file_system_stops_the_log_not_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = OutputSink(tmp_path / "m.log")
    sink.write("before\n")

    def full(_text: str) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sink._log, "write", full)
    sink.pump(io.BytesIO(b"lost 1\nperformance: 3 x\n"))
    sink.close()
    assert sink.log_error == f"cannot write {tmp_path / 'm.log'}: No space left on device"
    assert sink.tail() == ["before", "lost 1", "performance: 3 x"]  # still drained and tailed
    assert sink.scanner.count == 1
