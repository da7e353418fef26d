"""madengine's ``pre_scripts`` and ``post_scripts`` (context): each ``{path, args}`` copied into
the run folder and run there, in order, before and after the model's script, in the same
place the script runs (the host's process group, the container). Pure: the wrapper is data.

A failing pre-script fails the model before its script runs; a failing post-script fails it
after, keeping the values the script printed (madengine: the run fails). Which step failed
is written to ``.mad_around`` in the run folder, read back by the session, so a script of
its own that exits with the wrapper's code is never mistaken for a pre-script.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_madengine.errors import UsageError

STEP_TIMEOUT_S = 600  # madengine's, per pre/post-script
STATUS_FILE = ".mad_around"
PRE_FAILED_EXIT = 86


@dataclass(frozen=True)
class Step:
    kind: str  # pre | post
    source: Path  # where the script is (absolute)
    args: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.source.name


def steps(context: Mapping[str, Any], workspace: Path) -> tuple[Step, ...]:
    """The context's pre and post scripts, checked (UsageError naming the key and entry)."""
    out: list[Step] = []
    for kind in ("pre", "post"):
        key = f"{kind}_scripts"
        raw = context.get(key) or []
        if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
            raise UsageError(f"context key '{key}' must be a list of {{'path': ..., 'args': ...}}, got {raw!r}")
        for i, entry in enumerate(raw):
            where = f"context key '{key}' entry {i}"
            if not isinstance(entry, Mapping) or not isinstance(entry.get("path"), str) or not entry["path"]:
                raise UsageError(f"{where} must be an object with a 'path', got {entry!r}")
            args = entry.get("args", "")
            if not isinstance(args, str):
                raise UsageError(f"{where}: 'args' must be a string, got {args!r}")
            try:
                argv = tuple(shlex.split(args))
            except ValueError as exc:
                raise UsageError(f"{where}: 'args' cannot be split ({exc})") from None
            source = (workspace / entry["path"]).resolve()  # the user's context: any path they give
            if not source.is_file():
                raise UsageError(f"{where}: {source} is not a file")
            out.append(Step(kind, source, argv))
    return tuple(out)


def wrap(argv: Sequence[str], around: Sequence[Step]) -> tuple[str, ...]:
    """The model's argv wrapped by its pre and post steps: ``bash -c SCRIPT mad-around argv...``.
    The script text is built from constants and ``shlex``-quoted names and arguments only."""
    if not around:
        return tuple(argv)
    lines = [
        "set -u",
        f'step() {{ timeout {STEP_TIMEOUT_S} bash "$@"; }}',
        f"rm -f {STATUS_FILE}",
    ]
    for step in (s for s in around if s.kind == "pre"):
        call = shlex.join([step.name, *step.args])
        lines.append(f"step {call}; rc=$?; if [ $rc -ne 0 ]; then "
                     f"echo {shlex.quote(f'pre {step.name}')} $rc > {STATUS_FILE}; exit {PRE_FAILED_EXIT}; fi")
    lines.append('"$@"; status=$?')
    for step in (s for s in around if s.kind == "post"):
        call = shlex.join([step.name, *step.args])
        lines.append(f"step {call}; rc=$?; if [ $rc -ne 0 ] && [ ! -s {STATUS_FILE} ]; then "
                     f"echo {shlex.quote(f'post {step.name}')} $rc > {STATUS_FILE}; fi")
    lines.append("exit $status")
    return ("bash", "-c", "\n".join(lines), "mad-around", *argv)


def failed_step(run_dir: Path) -> tuple[str, str, int] | None:
    """(pre|post, script name, exit code) of the step that failed, from the run folder."""
    try:
        text = (run_dir / STATUS_FILE).read_text().split()
    except OSError:
        return None
    if len(text) != 3 or not text[2].lstrip("-").isdigit():
        return None
    return text[0], text[1], int(text[2])
