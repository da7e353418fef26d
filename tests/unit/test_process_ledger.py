"""The ledger of running model process groups: a group whose owner died is ended, no other."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from pytest_madengine import process
from tests.procs import dead_pid


def _group(model: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"], start_new_session=True, env={**os.environ, "MAD_MODEL_NAME": model})


def test_only_groups_of_dead_owners_running_their_model_are_ended(tmp_path: Path) -> None:
    orphan, owned, stranger = _group("lost"), _group("mine"), _group("other")
    try:
        ledger = tmp_path / process.LEDGER
        (process.record_group(ledger, orphan.pid, "lost")).write_text(f"{dead_pid()}\nlost\n")
        process.record_group(ledger, owned.pid, "mine")  # this process owns it: alive
        (ledger / str(stranger.pid)).write_text(f"{dead_pid()}\nnot-its-model\n")  # a reused pid
        assert process.sweep_orphan_groups(ledger) == [f"lost (group {orphan.pid})"]
        assert orphan.wait(timeout=5) != 0
        time.sleep(0.2)
        assert owned.poll() is None and stranger.poll() is None
        assert sorted(p.name for p in ledger.iterdir()) == [str(owned.pid)]
    finally:
        for p in (orphan, owned, stranger):
            p.kill()
            p.wait()


def test_a_missing_ledger_is_nothing_to_sweep(tmp_path: Path) -> None:
    assert process.sweep_orphan_groups(tmp_path / "absent") == []
