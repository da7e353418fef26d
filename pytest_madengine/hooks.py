"""Hooks pytest-madengine adds, so other plugins can extend a run without forking it."""

from __future__ import annotations

from typing import Any


def pytest_mad_result(item: Any, result: Any) -> None:
    """Called on the process that ran ``item`` with its ``ModelResult``, pass or fail,
    before pytest reports it: upload results, add properties, page someone."""
