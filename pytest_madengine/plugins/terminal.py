"""Writing to pytest's terminal while an item runs (output capture is suspended meanwhile)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

_LOCK = threading.Lock()


def writer(config: pytest.Config, prefix: str = "", newline: bool = True) -> Callable[[str], None]:
    """A thread-safe ``write(text)`` that reaches the real terminal even under capture."""

    def write(text: str) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        capman = config.pluginmanager.get_plugin("capturemanager")
        with _LOCK:
            if capman is not None:
                # private: capsys.disabled() serves tests only; a plugin has no public way past capture
                with capman.global_and_fixture_disabled():
                    _emit(reporter, prefix + text, newline)
            else:
                _emit(reporter, prefix + text, newline)

    return write


def _emit(reporter, text: str, newline: bool) -> None:  # type: ignore[no-untyped-def]
    if newline:
        reporter.write_line(text)
    else:
        reporter.write(text)
        reporter.flush()
