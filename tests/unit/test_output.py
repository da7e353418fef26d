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


class Trickle(io.RawIOBase):
    """A pipe that hands out its bytes in pieces of the sizes given, cycled."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data, self.sizes, self.pos, self.i = data, sizes, 0, 0

    def readable(self) -> bool:
        return True

    def read1(self, n: int = -1) -> bytes:
        size = min(n, self.sizes[self.i % len(self.sizes)])
        self.i += 1
        piece = self.data[self.pos:self.pos + size]
        self.pos += len(piece)
        return piece


@pytest.mark.parametrize("sizes", [[1], [7, 3, 5000], [MAX_LINE + 1], [1 << 20]])
def test_lines_split_across_reads_are_logged_whole(tmp_path: Path, sizes: list[int]) -> None:
    lines = [b"short", b"", b"z" * (MAX_LINE - 1), b"performance: 2 x", "ünï".encode(), b"end"]
    sink = OutputSink(tmp_path / "m.log")
    sink.pump(Trickle(b"\n".join(lines) + b"\nno newline at the end", sizes))  # type: ignore[arg-type]
    sink.close()
    expected = b"\n".join(lines).decode() + "\nno newline at the end\n"
    assert (tmp_path / "m.log").read_text() == expected
    assert sink.scanner.count == 1 and sink.tail(1) == ["no newline at the end"]


def test_a_long_line_pieces_are_max_line_and_the_cut_counts_characters(tmp_path: Path) -> None:
    head = b"a" * MAX_LOG_LINE
    sink = OutputSink(tmp_path / "m.log")
    sink.pump(Trickle(head + "é€😀".encode() * 1000 + b"\nperformance: 5 x\n", [4093]))  # type: ignore[arg-type]
    sink.close()
    text = (tmp_path / "m.log").read_text()
    assert "cut at 1048576 bytes: 3000 more characters of it are not logged" in text
    assert sink.scanner.count == 1 and text.endswith("performance: 5 x\n")


def test_file_lines_cuts_long_lines_and_skips_their_rest(tmp_path: Path) -> None:
    from pytest_madengine.output import READ_CHUNK, file_lines

    f = tmp_path / "out"
    f.write_bytes(b"a\r\nbb\n" + b"x" * (3 * READ_CHUNK) + b"\nperformance: 7 x\n" + b"y" * 10 + b"\nlast")
    assert list(file_lines(f, max_line=4)) == ["a", "bb", "xxxx", "perf", "yyyy", "last"]
    assert [len(s) for s in file_lines(f)] == [1, 2, 64 * 1024, 16, 10, 4]
    assert list(file_lines(tmp_path / "missing")) == []


def test_a_stream_ending_inside_a_cut_line_does_not_swallow_the_next_one(tmp_path: Path) -> None:
    from pytest_madengine.output import LineFeed

    sink = OutputSink(tmp_path / "m.log")
    for data in (b"x" * (2 * MAX_LOG_LINE), b"performance: 7 x\n"):  # two job output files
        feed = LineFeed(sink)
        feed.feed(data)
        feed.end()
    sink.close()
    text = (tmp_path / "m.log").read_text()
    assert f"cut at {MAX_LOG_LINE} bytes: {MAX_LOG_LINE} more characters" in text
    assert text.endswith("performance: 7 x\n") and sink.scanner.lines[0].value == 7.0
