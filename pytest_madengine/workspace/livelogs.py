"""madengine's log names in the workspace, as links to our logs.

madengine writes ``<model>_<dockerfile stem>.build.live.log``, ``.run.live.log`` and the
combined ``.live.log`` in the folder it runs in; Jenkins archive patterns are built on them.
Our logs live under ``mad_logs/``; these names link there (relative links, so a checkout
that is moved or mounted elsewhere keeps them working).
"""

from __future__ import annotations

import os
from pathlib import Path

PHASES = ("build", "run", "")  # "" is madengine's combined build + run log


def live_log_name(model: str, stem: str, phase: str) -> str:
    """``org/model`` + ``x.ubuntu.amd`` + ``run`` -> ``org_model_x.ubuntu.amd.run.live.log``."""
    base = f"{model.replace('/', '_')}_{stem}"
    return f"{base}.{phase}.live.log" if phase else f"{base}.live.log"


def link(workspace: Path, name: str, target: Path) -> Path | None:
    """Point ``workspace/name`` at ``target``; replaces an earlier link or log file of that
    name (madengine overwrites its logs too), never a folder. None when it cannot be made."""
    path = workspace / name
    if os.path.isdir(path) and not os.path.islink(path):
        return None
    tmp = workspace / f".{name}.{os.getpid()}.tmp"
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(os.path.relpath(target, workspace), tmp)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return None
    return path
