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
ENV_SCRIPT = ".mad_env_snapshot.sh"
# madengine's `<model>_env.csv` (gen_sys_env_details), written where the script runs (host or
# container): what that environment is, not what the host running pytest is. Never fails a run.
ENV_SNAPSHOT = r"""out="$1"
py() { python3 -c "$1" 2>/dev/null; }
{
  echo "key,value"
  echo "os,\"$(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-unknown}")\""
  echo "kernel,$(uname -r)"
  echo "cpu,\"$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//; s/"//g')\""
  echo "cpus,$(nproc 2>/dev/null || echo unknown)"
  echo "memory_kb,$(awk '/MemTotal/ {print $2}' /proc/meminfo 2>/dev/null)"
  # one interpreter start, versions from the dist-info folder names: a run pays a few tens of
  # milliseconds for its snapshot (importlib.metadata would scan every installed package)
  py 'import glob, os, platform, sys
print("python," + platform.python_version())
seen = set()
for folder in sys.path:
    for pkg in ("torch", "numpy", "transformers", "vllm", "sglang", "deepspeed", "megatron_core"):
        for hit in glob.glob(os.path.join(folder, pkg + "-*.dist-info")):
            name, _, version = os.path.basename(hit)[: -len(".dist-info")].partition("-")
            if name not in seen:
                seen.add(name)
                print(name + "," + version)' || echo "python,none"
  if command -v amd-smi >/dev/null 2>&1; then echo "amd_smi,\"$(amd-smi version 2>/dev/null | head -1 | tr -d '"')\""; fi
  if command -v rocm-smi >/dev/null 2>&1; then echo "rocm_driver,\"$(rocm-smi --showdriverversion 2>/dev/null | grep -i version | head -1 | tr -d '"')\""; fi
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "nvidia_driver,$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)"
    echo "gpus,\"$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | paste -sd';' | tr -d '"')\""
  fi
} > "$out" 2>/dev/null
exit 0
"""
STATUS_FILE = ".mad_around"
PRE_FAILED_EXIT = 86


# madengine copies its packaged ``scripts/common`` into the checkout before a run, so contexts
# written for it name scripts a checkout does not hold. Those we ship (our own files) stand in
# when the checkout has none at that path: {path in the context: file in tooldata}.
PACKAGED_COMMON = {
    "scripts/common/pre_scripts/pre_test.sh": "mad_common_pre_test.sh",
    "scripts/common/post_scripts/post_test.sh": "mad_common_post_test.sh",
    "scripts/common/test_echo.sh": "mad_tool_echo.sh",
}
TOOLDATA = Path(__file__).resolve().parent / "tooldata"


@dataclass(frozen=True)
class Step:
    kind: str  # pre | post
    source: Path  # where the script is (absolute)
    args: tuple[str, ...]
    as_name: str = ""  # its name in the run folder, when not the source's (a packaged stand-in)

    @property
    def name(self) -> str:
        return self.as_name or self.source.name


def packaged_stand_in(path: str) -> Path | None:
    """Our file for a madengine-packaged ``scripts/common`` script named in a context, or None."""
    name = PACKAGED_COMMON.get(Path(path).as_posix().removeprefix("./"))
    return TOOLDATA / name if name else None


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
            stand_in = packaged_stand_in(entry["path"])
            if not source.is_file() and stand_in is not None:
                out.append(Step(kind, stand_in, argv, as_name=source.name))
                continue
            if not source.is_file():
                raise UsageError(f"{where}: {source} is not a file")
            out.append(Step(kind, source, argv))
    return tuple(out)


def env_snapshot_on(card: Mapping[str, Any], context: Mapping[str, Any]) -> bool:
    """``gen_sys_env_details`` (card, then context; on unless false)."""
    on: Any = True
    for source in (card, context):
        if "gen_sys_env_details" in source:
            on = source["gen_sys_env_details"]
    return str(on).strip().lower() not in ("false", "0", "no", "off", "")


def env_csv_name(model: str) -> str:
    return f"{model.replace('/', '_')}_env.csv"


def prefix(around: Sequence[Step], env_csv: str = "") -> tuple[str, ...]:
    """What runs the model's argv (appended as ``"$@"``) with its pre and post steps:
    ``bash -c SCRIPT mad-around``; () when there is nothing around it. The script text is built
    from constants and ``shlex``-quoted names and arguments only. ``env_csv``: first write the
    environment snapshot there (``ENV_SCRIPT`` in the run folder). Without post steps the
    script is ``exec``'d, so its exit status and signals reach us as they are."""
    if not around and not env_csv:
        return ()
    lines = [
        "set -u",
        f'step() {{ timeout {STEP_TIMEOUT_S} bash "$@"; }}',
        f"rm -f {STATUS_FILE}",
    ]
    if env_csv:
        lines.append(f"bash {ENV_SCRIPT} {shlex.quote(env_csv)}")
    for step in (s for s in around if s.kind == "pre"):
        call = shlex.join([step.name, *step.args])
        lines.append(f"step {call}; rc=$?; if [ $rc -ne 0 ]; then "
                     f"echo {shlex.quote(f'pre {step.name}')} $rc > {STATUS_FILE}; exit {PRE_FAILED_EXIT}; fi")
    posts = [s for s in around if s.kind == "post"]
    if not posts:
        lines.append('exec "$@"')
        return ("bash", "-c", "\n".join(lines), "mad-around")
    lines.append('"$@"; status=$?')
    for step in posts:
        call = shlex.join([step.name, *step.args])
        lines.append(f"step {call}; rc=$?; if [ $rc -ne 0 ] && [ ! -s {STATUS_FILE} ]; then "
                     f"echo {shlex.quote(f'post {step.name}')} $rc > {STATUS_FILE}; fi")
    lines.append("exit $status")
    return ("bash", "-c", "\n".join(lines), "mad-around")


def describe(around: Sequence[Step], env_csv: str) -> str:
    """One line for the plan."""
    parts = [f"environment snapshot to {env_csv}"] if env_csv else []
    for kind in ("pre", "post"):
        names = [shlex.join([s.name, *s.args]) for s in around if s.kind == kind]
        if names:
            parts.append(f"{kind}-scripts {'; '.join(names)}")
    return ", ".join(parts)


def failed_step(run_dir: Path) -> tuple[str, str, int] | None:
    """(pre|post, script name, exit code) of the step that failed, from the run folder."""
    try:
        text = (run_dir / STATUS_FILE).read_text().split()
    except OSError:
        return None
    if len(text) != 3 or not text[2].lstrip("-").isdigit():
        return None
    return text[0], text[1], int(text[2])
