"""Helpers about processes shared by unit and end-to-end tests."""

from __future__ import annotations

import os


def dead_pid() -> int:
    """A pid no process has now (the owner of an orphan that died)."""
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1
