"""madengine's log names in the workspace, as links to our logs, and its copy of a model's
``multiple_results`` CSV there.

madengine writes ``<model>_<dockerfile stem>.build.live.log``, ``.run.live.log`` and the
combined ``.live.log`` in the folder it runs in; Jenkins archive patterns are built on them.
Our logs live under ``mad_logs/``; these names link there (relative links, so a checkout
that is moved or mounted elsewhere keeps them working).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
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
    return _replace(workspace, name, lambda tmp: os.symlink(os.path.relpath(target, workspace), tmp))


def _replace(workspace: Path, name: str, make: Callable[[Path], object]) -> Path | None:
    """``make`` a temporary entry beside ``workspace/name``, then rename it over that name (a
    reader sees the old entry or the new one, never half of one). None when it cannot be made."""
    path, tmp = workspace / name, workspace / f".{name}.{os.getpid()}.tmp"
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        make(tmp)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return None
    return path


# Files of the workspace a results CSV must never replace: madengine's and our own reports.
REPORT_NAMES = frozenset({"perf.csv", "perf_entry.csv", "perf_super.csv", "perf_entry_super.csv"})


def results_copy_name(multiple_results: str) -> str | None:
    """Where madengine leaves a model's ``multiple_results`` CSV: the folder it runs in, under
    the CSV's file name (scripts of its fixture even ``cp`` it to ``../`` to get it there).
    None for a name that is no CSV or would replace a report."""
    name = Path(multiple_results).name
    if not name.lower().endswith(".csv") or name in REPORT_NAMES or name.startswith("."):
        return None
    return name


def copy_result(workspace: Path, multiple_results: str, source: Path) -> Path | None:
    """Copy ``source`` to ``workspace/<its name>`` atomically (parallel runs see the old file or
    the new one, never half of one); replaces a file of that name (as madengine does), never a
    folder or a link. None when nothing was copied."""
    name = results_copy_name(multiple_results)
    if name is None or not source.is_file():
        return None
    path = workspace / name
    if os.path.lexists(path) and (os.path.islink(path) or not os.path.isfile(path)):
        return None
    return _replace(workspace, name, lambda tmp: shutil.copyfile(source, tmp))
