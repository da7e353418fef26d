"""madengine's profiling tools (context key ``tools``) and ``encapsulate_script``. Pure: what
runs around the model's script is data (argv and steps), the session copies and runs it.

``tools: [{"name": N, "cmd"?: override, "env_vars"?: {...}}]`` picks entries of our packaged
``tooldata/tools.json`` (madengine's format and names, plus ``requires``: the binaries a tool
needs, ``a|b`` for either). Stacked as madengine does: in list order each tool's ``cmd`` is put
in front of the command so far (the first tool innermost, the same cmd only once), its
``pre_scripts`` in front of the pre-scripts so far, its ``post_scripts`` after the post-scripts
so far, its ``env_vars`` into the environment; ``encapsulate_script`` sits between the tools and
the script. Differences: a ``cmd`` is a command line split like a shell would (``shlex``) and run
without a shell, so shell operators (``&&``, ``;``, ``|``) are refused; a missing binary is
checked for before anything runs and named (``.mad_tools_missing``); every wrapper passes the
workload's exit status on.
"""

from __future__ import annotations

import difflib
import json
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pytest_madengine.errors import UsageError
from pytest_madengine.workspace.around import Step

TOOLDATA = Path(__file__).resolve().parent / "tooldata"
TOOLS_JSON = TOOLDATA / "tools.json"
MISSING_FILE = ".mad_tools_missing"
MISSING_EXIT = 87
SHELL_OPERATORS = frozenset({"&&", "||", ";", "|", "&", ">", ">>", "<", "2>", "2>&1"})
# What a tool leaves in the run folder (madengine copies these to its workspace; we copy them
# to the model's tools folder next to its log): files by pattern, folders by name.
OUTPUT_PATTERNS = ("*_output.csv", "*_trace.csv", "library_trace.csv", "*_profiler_output.csv")
OUTPUT_DIRS = ("rocprof_output", "rpd_output", "rocm_trace_lite_output", "nsys_output")


@dataclass(frozen=True)
class Tool:
    name: str
    cmd: tuple[str, ...]  # argv put in front of the command so far; () for none
    env: tuple[tuple[str, str], ...]
    pre: tuple[Step, ...]
    post: tuple[Step, ...]
    requires: tuple[str, ...]  # binaries, each "a" or "a|b" (either)


@dataclass(frozen=True)
class ToolSet:
    """The context's tools and ``encapsulate_script``, checked."""

    tools: tuple[Tool, ...] = ()
    encapsulate: tuple[str, ...] = ()
    files: tuple[Path, ...] = ()  # copied into the run folder (the cmds' helper scripts, counters)

    def __bool__(self) -> bool:
        return bool(self.tools or self.encapsulate)

    @property
    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for tool in self.tools:
            out.update(tool.env)
        return out

    def chain(self) -> tuple[str, ...]:
        """What runs the script (appended): the last tool outermost, then ``encapsulate_script``."""
        out = list(self.encapsulate)
        seen: set[tuple[str, ...]] = set()
        for tool in self.tools:
            if tool.cmd and tool.cmd not in seen:  # one wrapper for several library traces
                seen.add(tool.cmd)
                out = [*tool.cmd, *out]
        return tuple(out)

    def stack(self, around: Sequence[Step]) -> tuple[Step, ...]:
        """The context's pre/post scripts with the tools' ones, in madengine's order."""
        pre = [s for s in around if s.kind == "pre"]
        post = [s for s in around if s.kind == "post"]
        for tool in self.tools:
            pre = [*tool.pre, *pre]
            post = [*post, *tool.post]
        return (*pre, *post)

    def check_prefix(self) -> tuple[str, ...]:
        """``bash -c SCRIPT mad-tools`` checking every required binary before anything runs
        (the first missing one named in ``MISSING_FILE``, exit ``MISSING_EXIT``); () if none."""
        checks = []
        for tool in self.tools:
            for need in tool.requires:
                found = " || ".join(f"command -v {shlex.quote(b)}" for b in need.split("|"))
                note = shlex.quote(f"{tool.name} {need}")
                say = shlex.quote(f"pytest-madengine: tool '{tool.name}' needs {need.replace('|', ' or ')}, "
                                  "which is not installed here")
                checks.append(f"if ! {{ {found}; }} >/dev/null 2>&1; then echo {note} > {MISSING_FILE}; "
                              f"echo {say} >&2; exit {MISSING_EXIT}; fi")
        if not checks:
            return ()
        return ("bash", "-c", "\n".join([f"rm -f {MISSING_FILE}", *checks, 'exec "$@"']), "mad-tools")

    def describe(self) -> str:
        parts = []
        if self.tools:
            needs = list(dict.fromkeys(n.replace("|", " or ") for t in self.tools for n in t.requires))
            parts.append("tools " + ", ".join(t.name for t in self.tools)
                         + (f" (checked first: {', '.join(needs)})" if needs else ""))
        chain = self.chain()
        if chain:
            parts.append(f"script run by {shlex.join(chain)}")
        return ", ".join(parts)


@cache
def catalog() -> Mapping[str, Mapping[str, Any]]:
    """Our packaged tools.json: name -> entry."""
    data = json.loads(TOOLS_JSON.read_text())
    return dict(data["tools"])


def _argv(text: Any, where: str) -> tuple[str, ...]:
    if not isinstance(text, str):
        raise UsageError(f"{where} must be a string (a command line), got {text!r}")
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise UsageError(f"{where} cannot be split: {exc}") from None
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    bad = [a for a in argv if a in SHELL_OPERATORS]
    if not bad and tuple(lexer) != argv:  # an operator stuck to a word: `all;`
        bad = [a for a in shlex.shlex(text, posix=True, punctuation_chars=True) if a and set(a) <= set("();<>|&")]
    if bad:
        raise UsageError(f"{where}: {text!r} is run without a shell; {bad[0]!r} is not allowed "
                         "(put the commands in a script and name it instead)")
    return argv


def _localise(argv: tuple[str, ...], base: Path, files: dict[str, Path]) -> tuple[str, ...]:
    """Tokens naming a file under ``base`` (relative) are copied into the run folder under their
    name: the command then finds them in its working directory, host or container alike."""
    out = []
    for token in argv:
        source = base / token
        if token and not Path(token).is_absolute() and ".." not in Path(token).parts and source.is_file():
            name = source.name
            if name in files and files[name] != source.resolve():
                raise UsageError(f"two different files named {name} would be copied into the run folder")
            files[name] = source.resolve()
            out.append(name)
        else:
            out.append(token)
    return tuple(out)


def _steps(kind: str, raw: Any) -> tuple[Step, ...]:
    """A packaged tool's pre/post scripts (paths relative to ``tooldata``)."""
    return tuple(Step(kind, TOOLDATA / e["path"], tuple(shlex.split(e.get("args", "")))) for e in raw or [])


def _env(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) for k in raw):
        raise UsageError(f"{where} must be an object of NAME: value, got {raw!r}")
    out = {}
    for key, value in raw.items():
        if isinstance(value, (dict, list)) or value is None:
            raise UsageError(f"{where}: {key} must be a string or number, got {value!r}")
        out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def from_context(context: Mapping[str, Any], workspace: Path) -> ToolSet:
    """The context's ``tools`` and ``encapsulate_script``, checked (UsageError naming the key
    and entry). Paths in a context ``cmd`` or ``encapsulate_script`` are relative to the checkout."""
    raw = context.get("tools") or []
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        raise UsageError(f"context key 'tools' must be a list of {{'name': ...}}, got {raw!r}")
    known = catalog()
    files: dict[str, Path] = {}
    tools = []
    for i, entry in enumerate(raw):
        where = f"context key 'tools' entry {i}"
        if isinstance(entry, str):  # a bare name: a convenience madengine does not have
            entry = {"name": entry}
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise UsageError(f"{where} must be an object with a 'name', got {entry!r}")
        name = entry["name"]
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(known))}"
            raise UsageError(f"{where}: unknown tool {name!r}{hint}")
        spec = known[name]
        if "cmd" in entry:
            cmd = _localise(_argv(entry["cmd"], f"{where}: 'cmd'"), workspace, files)
            requires = (cmd[0],) if cmd and cmd[0] not in files and "/" not in cmd[0] else ()
        else:
            cmd = _localise(_argv(spec.get("cmd", ""), f"tools.json '{name}': 'cmd'"), TOOLDATA, files)
            requires = tuple(spec.get("requires", ()))
        env = {**_env(spec.get("env_vars"), f"tools.json '{name}': 'env_vars'"),
               **_env(entry.get("env_vars"), f"{where}: 'env_vars'")}
        pre, post = _steps("pre", spec.get("pre_scripts")), _steps("post", spec.get("post_scripts"))
        tools.append(Tool(name, cmd, tuple(env.items()), pre, post, requires))
    encapsulate: tuple[str, ...] = ()
    if context.get("encapsulate_script"):
        encapsulate = _localise(_argv(context["encapsulate_script"], "context key 'encapsulate_script'"),
                                workspace, files)
    return ToolSet(tuple(tools), encapsulate, tuple(files.values()))


def missing(run_dir: Path) -> tuple[str, str] | None:
    """(tool, binary) the check found missing in the last run, from the run folder."""
    try:
        text = (run_dir / MISSING_FILE).read_text().split()
    except OSError:
        return None
    return (text[0], text[1]) if len(text) == 2 else None


def outputs(run_dir: Path) -> list[Path]:
    """The tools' outputs the run left in its folder (top level, as madengine looks)."""
    found: dict[Path, None] = {}
    for pattern in OUTPUT_PATTERNS:
        for p in sorted(run_dir.glob(pattern)):
            if p.is_file():
                found[p] = None
    for name in OUTPUT_DIRS:
        if (run_dir / name).is_dir():
            found[run_dir / name] = None
    return list(found)


def collect(run_dir: Path, dest: Path) -> dict[str, str]:
    """Copy the tools' outputs into ``dest`` (emptied first); JUnit properties naming them."""
    shutil.rmtree(dest, ignore_errors=True)
    props = {}
    for src in outputs(run_dir):
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / src.name
        if src.is_dir():
            shutil.copytree(src, target, symlinks=True)
        else:
            shutil.copy2(src, target)
        props[f"tool_output.{src.name}"] = str(target)
    return props
