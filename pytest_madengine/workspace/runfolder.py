"""The per-model run folder: a copy of the script's folder, as madengine's ``run_directory``.

A checkout may hold symlinks. One that stays inside the checkout is followed (the run folder
lives elsewhere, so a relative link would break if copied as a link); one that leads outside
is left out and said in the log: a models file must not be able to copy the host's files
into a run folder (and from there into a container or a results archive).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from pytest_madengine.errors import ExecutorError

VCS_DIRS = frozenset({".git", ".hg", ".svn"})


def inside(path: str, bounds: Iterable[Path]) -> bool:
    real = os.path.realpath(path)
    return any(real == str(b) or real.startswith(str(b).rstrip(os.sep) + os.sep) for b in bounds)


def copy_script_folder(source: Path, dest: Path, *, bounds: tuple[Path, ...], skip: Iterable[Path],
                       note: Callable[[str], None], fresh: bool = True) -> None:
    """Copy ``source`` into ``dest`` (emptied first unless ``fresh`` is False: a clone is
    already there); symlinks followed only inside ``bounds``; ``skip`` (our own output
    folders) and version-control data left out."""
    if not inside(str(source), bounds):
        raise ExecutorError(f"script folder {source} leads outside {' or '.join(map(str, bounds))}")
    skipped = {os.path.realpath(p) for p in skip}
    if fresh:
        shutil.rmtree(dest, ignore_errors=True)  # results of an earlier run must never be read as this run's

    def copy_dir(src: str, dst: str, seen: frozenset[str]) -> None:
        os.makedirs(dst, exist_ok=True)
        with os.scandir(src) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                target = os.path.join(dst, entry.name)
                if entry.name in VCS_DIRS or os.path.realpath(entry.path) in skipped:
                    continue
                if entry.is_symlink():
                    real = os.path.realpath(entry.path)
                    rel = os.path.relpath(entry.path, source)
                    if not inside(real, bounds):
                        note(f"left out {rel}: a symlink to {os.readlink(entry.path)}, outside the checkout")
                    elif not os.path.exists(real):
                        note(f"left out {rel}: a symlink to {os.readlink(entry.path)}, which does not exist")
                    elif os.path.isdir(real):
                        if real in seen:
                            note(f"left out {rel}: a symlink loop")
                        else:
                            copy_dir(real, target, seen | {real})
                    else:
                        shutil.copy2(real, target)
                elif entry.is_dir(follow_symlinks=False):
                    copy_dir(entry.path, target, seen | {os.path.realpath(entry.path)})
                elif entry.is_file(follow_symlinks=False):
                    shutil.copy2(entry.path, target)
                # sockets, fifos and devices are not copied

    copy_dir(str(source), str(dest), frozenset({os.path.realpath(source)}))
