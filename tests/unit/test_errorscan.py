"""madengine's log error scan: patterns, benign lines, settings from card and context."""

from __future__ import annotations

import pytest

from pytest_madengine.errors import UsageError
from pytest_madengine.results.errorscan import DEFAULT_PATTERNS, ErrorScan, from_settings


def scan(lines: list[str], **kw: object) -> ErrorScan:
    s = ErrorScan(DEFAULT_PATTERNS, **kw)  # type: ignore[arg-type]
    for line in lines:
        s.feed(line)
    return s


def test_the_first_error_line_is_named_with_its_pattern_and_number() -> None:
    s = scan(["starting", "RuntimeError: CUDA out of memory. Tried to allocate 2 GiB", "Traceback (most recent call last)",
              "performance: 12 samples_per_second"])
    assert s.hit is not None and s.hit.line_no == 2
    assert s.hit.pattern == "RuntimeError:"  # the leftmost pattern on the line
    assert s.hit.reason().startswith("error pattern 'RuntimeError:' at line 2: RuntimeError: CUDA out")


def test_benign_lines_never_count() -> None:
    assert scan(["/x.py:3: FutureWarning: ValueError: is deprecated"]).hit is None
    assert scan(["E20261204 rocprof glog: Exception: harmless"]).hit is None
    assert scan(["ours: FAILED is fine here"], benign=["ours:"]).hit is None
    assert scan(["failed (exitcode: 1)"]).hit is not None


def test_patterns_are_literal_and_case_sensitive() -> None:
    assert scan(["valueerror: lower case", "a.*b"]).hit is None
    assert ErrorScan(["a.*b"]).feed("x a.*b y") is not None


def test_long_lines_are_cut_in_the_reason() -> None:
    s = scan(["x" * 1000 + " FAILED"])
    assert s.hit is not None and len(s.hit.text) <= 303


def test_settings_card_then_context() -> None:
    assert from_settings({}, {}) is not None  # on by default, as madengine
    assert from_settings({"log_error_pattern_scan": False}, {}) is None
    assert from_settings({"log_error_pattern_scan": False}, {"log_error_pattern_scan": "true"}) is not None
    assert from_settings({}, {"log_error_pattern_scan": "0"}) is None
    s = from_settings({"log_error_patterns": ["BOOM"]}, {})
    assert s is not None and s.patterns == ("BOOM",)
    s = from_settings({"log_error_patterns": ["BOOM"]}, {"log_error_patterns": ["BANG"]})
    assert s is not None and s.patterns == ("BANG",)  # the context wins
    s = from_settings({"log_error_benign_patterns": ["card ok"]}, {"log_error_benign_patterns": ["ctx ok"]})
    assert s is not None and s.feed("card ok: FAILED") is None and s.feed("ctx ok: FAILED") is None


@pytest.mark.parametrize(("card", "ctx", "key"), [
    ({"log_error_patterns": [1]}, {}, "model card field 'log_error_patterns'"),
    ({}, {"log_error_pattern_scan": [True]}, "context key 'log_error_pattern_scan'"),
])
def test_bad_settings_name_their_key(card: dict[str, object], ctx: dict[str, object], key: str) -> None:
    with pytest.raises(UsageError, match=key):
        from_settings(card, ctx)
