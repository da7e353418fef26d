"""models.json entries as validated, frozen records: the fields, their checks, the paths
an entry may name (inside the checkout), and the scripts madengine can run. An entry that
fails becomes a ``BrokenEntry`` naming its file, index and fields."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_madengine.models import run_options as docker_run_options

# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Model:
    """One validated models.json entry."""

    name: str
    source: Path
    index: int
    base_dir: Path
    scope: str | None
    dockerfile: str
    scripts: str
    n_gpus: int
    tags: tuple[str, ...]
    args: str = ""
    timeout: int = -1
    multiple_results: str = ""
    skip_gpu_arch: tuple[str, ...] = ()
    # Mappings are compared but not hashed, so a Model stays hashable.
    env_vars: Mapping[str, str] = field(default_factory=dict, hash=False)
    owner: str = ""
    training_precision: str = ""
    url: str = ""
    data: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, hash=False, repr=False)

    @property
    def script_path(self) -> Path:
        """The script, resolved against ``base_dir`` (``..`` collapsed, as madengine does)."""
        return Path(os.path.normpath(self.base_dir / self.scripts))

    @property
    def dockerfile_prefix(self) -> Path:
        """The Dockerfile prefix, resolved against ``base_dir``; real files are ``PREFIX.*.Dockerfile``."""
        return Path(os.path.normpath(self.base_dir / self.dockerfile))


@dataclass(frozen=True)
class BrokenEntry:
    """An entry that failed validation; it becomes a failing test item."""

    source: Path
    index: int
    name: str | None
    tags: tuple[str, ...]
    scope: str | None
    message: str


@dataclass(frozen=True)
class LoadResult:
    models: list[Model]
    broken: list[BrokenEntry]


# ------------------------------------------------------------------- small helpers


def _label(path: Path) -> str:
    """How a file is named in messages: relative to the working folder when under it."""
    try:
        absolute = path.absolute()
        rel = absolute.relative_to(Path.cwd())
    except (ValueError, OSError):
        return str(path)
    return str(rel)


def _show(value: Any) -> str:
    """A short repr of a bad value for a message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _prefixed(name: str, scope: str | None) -> str:
    return f"{scope}/{name}" if scope else name


def _entry_ref(label: str, index: int, name: Any) -> str:
    if isinstance(name, str) and name.strip():
        return f"{label} entry {index} ({name!r})"
    return f"{label} entry {index}"


def _split_commas(text: str) -> tuple[str, ...]:
    return tuple(p for p in (s.strip() for s in text.split(",")) if p)


# ------------------------------------------------------------- field validation
#
# Each checker takes the raw value and returns (converted, None) or (None, reason).
# The reason completes "field 'x' ...". The common, valid case is kept cheap (about
# 10 microseconds an entry), so that zoos of thousands of entries collect quickly.

_Check = tuple[Any, "str | None"]


def _check_required_str(value: Any) -> _Check:
    if type(value) is str and value and value == value.strip():
        return value, None
    if isinstance(value, str) and value.strip():
        return None, f"must not start or end with blanks, got {_show(value)}"
    return None, f"must be a non-empty string, got {_show(value)}"


def _check_str(value: Any) -> _Check:
    if isinstance(value, str):
        return value, None
    return None, f"must be a string, got {_show(value)}"


def _int_like(value: Any, what: str) -> _Check:
    if type(value) is int:
        return value, None
    if isinstance(value, str):
        try:
            return int(value), None
        except ValueError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        return int(value), None
    return None, f"must be {what}, got {_show(value)}"


def _check_n_gpus(value: Any) -> _Check:
    n, why = _int_like(value, "an integer or a string holding one")
    if why is None and n < -1:
        return None, f"must be -1 (all GPUs) or a count >= 0, got {_show(value)}"
    return n, why


def _check_timeout(value: Any) -> _Check:
    n, why = _int_like(value, "an integer number of seconds or a string holding one")
    if why is None and n < -1:
        return None, f"must be -1 (default), 0 (no timeout) or seconds > 0, got {_show(value)}"
    return n, why


def _check_str_list(value: Any) -> _Check:
    """A list of strings or a comma string -> tuple of stripped, non-empty strings."""
    if isinstance(value, str):
        return _split_commas(value), None
    if isinstance(value, list):
        try:
            return tuple(s for s in map(str.strip, value) if s), None
        except TypeError:
            bad = next(item for item in value if not isinstance(item, str))
            return None, f"must be a list of strings or a comma-separated string, holds {_show(bad)}"
    return None, f"must be a list of strings or a comma-separated string, got {_show(value)}"


def _check_args(value: Any) -> _Check:
    """A string that splits like a shell command line (the session runs ``shlex.split`` on it)."""
    if not isinstance(value, str):
        return None, f"must be a string, got {_show(value)}"
    if "'" in value or '"' in value or "\\" in value:  # without these, shlex.split cannot fail
        try:
            shlex.split(value)
        except ValueError as exc:
            return None, f"cannot be split like a shell command line ({exc}), got {_show(value)}"
    return value, None


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_env_vars(value: Any) -> _Check:
    if not isinstance(value, dict):
        return None, f"must be an object mapping names to values, got {_show(value)}"
    out: dict[str, str] = {}
    for key, val in value.items():
        if not key:
            return None, "has an empty variable name"
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            return None, (f"has {_show(key)}, which is not an environment variable name "
                          "(letters, digits and _, not starting with a digit)")
        if isinstance(val, str):
            out[key] = val
        elif isinstance(val, (bool, int, float)):
            out[key] = str(val)
        else:
            return None, f"value of {key!r} must be a string or a number, got {_show(val)}"
    return out, None


def _check_object(value: Any) -> _Check:
    if isinstance(value, dict):
        return value, None
    return None, f"must be an object, got {_show(value)}"


# Fields we check; anything else is kept in ``raw`` untouched. A null value counts as absent.
_CHECKS = {
    "name": _check_required_str,
    "dockerfile": _check_required_str,
    "scripts": _check_required_str,
    "args": _check_args,
    "url": _check_str,
    "owner": _check_str,
    "training_precision": _check_str,
    "data": _check_str,
    "multiple_results": _check_str,
    "n_gpus": _check_n_gpus,
    "tags": _check_str_list,
    "timeout": _check_timeout,
    "skip_gpu_arch": _check_str_list,
    "env_vars": _check_env_vars,
    "distributed": _check_object,
    "slurm": _check_object,
}
_REQUIRED = ("name", "dockerfile", "scripts")
# Model fields an entry may leave out, with their values then.
_MODEL_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(Model) if f.default is not dataclasses.MISSING
}
_MODEL_DEFAULTS.update(n_gpus=-1, tags=())


# How madengine runs a script, by kind; anything else is refused when the file is collected.
SCRIPT_KINDS = {".sh": "bash", ".slurm": "bash", ".sbatch": "bash", ".py": "python3"}


class _Paths:
    """Where a models file's paths may lead: inside ``bounds`` (the checkout, or the folder of a
    file given with --mad-models that lies outside it), symlinks resolved. One instance per
    file, caching resolutions: thousands of entries share a handful of paths."""

    def __init__(self, bounds: Sequence[Path]) -> None:
        self.bounds = tuple(str(b) for b in bounds)
        self._real: dict[str, str] = {}

    def real(self, path: str) -> str:
        got = self._real.get(path)
        if got is None:
            got = self._real[path] = os.path.realpath(path)
        return got

    def inside(self, path: str) -> bool:
        if not self.bounds:
            return True
        real = self.real(path)
        return any(real == b or real.startswith(b + os.sep) or b == os.sep for b in self.bounds)

    def where(self) -> str:
        return " or ".join(self.bounds) if self.bounds else "(anywhere)"


def _check_paths(values: dict[str, Any], entry: Mapping[str, Any], base_dir: Path, paths: _Paths,
                 root: Path | None) -> list[str]:
    """Problems with the entry's paths: outside the bounds, or a script madengine cannot run."""
    problems: list[str] = []
    scripts = values.get("scripts")
    if isinstance(scripts, str):
        full = os.path.normpath(os.path.join(base_dir, scripts))
        suffix = os.path.splitext(scripts)[1].lower()
        if os.path.isabs(scripts) or not paths.inside(full):
            problems.append(f"field 'scripts' {scripts!r} leads outside {paths.where()}")
        elif suffix not in SCRIPT_KINDS and not values.get("url") and not os.path.isdir(full):
            what = "a file" if os.path.exists(full) else "neither a file nor a folder that exists"
            problems.append(f"field 'scripts' {scripts!r} is {what}; madengine runs .sh, .slurm and .sbatch "
                            "scripts with bash, .py with python3, and a folder's run.sh")
    dockerfile = values.get("dockerfile")
    if isinstance(dockerfile, str):
        full = os.path.normpath(os.path.join(base_dir, dockerfile))
        if os.path.isabs(dockerfile) or not paths.inside(full):
            problems.append(f"field 'dockerfile' {dockerfile!r} leads outside {paths.where()}")
    options = entry.get("additional_docker_run_options")
    if options:
        if not isinstance(options, str):
            problems.append(f"field 'additional_docker_run_options' must be a string, got {_show(options)}")
        else:
            try:
                docker_run_options.parse(options, {})
            except docker_run_options.DockerRunOptionsError as exc:
                problems.append(f"field {exc}")
    context = entry.get("dockercontext")
    if context is not None:
        if not isinstance(context, str):
            problems.append(f"field 'dockercontext' must be a string, got {_show(context)}")
        elif context:
            # madengine resolves dockercontext against the workspace (the checkout root).
            full = os.path.normpath(os.path.join(root if root is not None else base_dir, context))
            if os.path.isabs(context) or not paths.inside(full):
                problems.append(f"field 'dockercontext' {context!r} leads outside {paths.where()}")
    return problems


def _validate(
    entry: Any, index: int, *, source: Path, label: str, base_dir: Path, scope: str | None,
    paths: _Paths | None = None, root: Path | None = None,
) -> Model | BrokenEntry:
    """Turn one raw entry into a Model, or a BrokenEntry naming every bad field."""
    if not isinstance(entry, dict):
        kind = {list: "a list", str: "a string", type(None): "null"}.get(type(entry), type(entry).__name__)
        return BrokenEntry(
            source,
            index,
            None,
            (),
            scope,
            f"{label} entry {index}: must be an object with 'name', 'dockerfile' and 'scripts', got {kind}",
        )

    values: dict[str, Any] = {}
    problems: list[str] = []
    checks = _CHECKS
    for key, raw_value in entry.items():
        check = checks.get(key)
        if check is None or raw_value is None:
            continue
        if check is _check_str and type(raw_value) is str:  # the common case, without a call
            values[key] = raw_value
            continue
        value, why = check(raw_value)
        if why is None:
            values[key] = value
        else:
            problems.append(f"field {key!r} {why}")
    for key in _REQUIRED:
        if key not in values and entry.get(key) is None:
            problems.append(f"missing required field {key!r}")
    if paths is not None:
        problems += _check_paths(values, entry, base_dir, paths, root)

    name = values.get("name")
    full_name = (f"{scope}/{name}" if scope else name) if name is not None else None
    tags = values.get("tags", ())
    if problems:
        return BrokenEntry(
            source,
            index,
            full_name,
            tags,
            scope,
            f"{_entry_ref(label, index, entry.get('name'))}: {'; '.join(problems)}",
        )
    values.pop("distributed", None)
    values.pop("slurm", None)
    if "env_vars" not in values:
        values["env_vars"] = {}
    # Model(**...) through the frozen dataclass __init__ costs about three times as much as
    # filling the instance dict directly, which matters for zoos of thousands of entries.
    # Model has no __post_init__ or __slots__; the unit tests compare both constructions.
    model = object.__new__(Model)
    fields = model.__dict__
    fields.update(_MODEL_DEFAULTS)
    fields.update(values)
    fields.update(name=full_name, source=source, index=index, base_dir=base_dir, scope=scope, raw=entry)
    return model


def _build(
    entries: Iterable[Any | BrokenEntry],
    *,
    source: Path,
    label: str,
    base_dir: Path,
    scope: str | None,
    bounds: Sequence[Path] | None = None,
    root: Path | None = None,
) -> LoadResult:
    """Validate entries in order; later duplicates of a name become broken."""
    paths = _Paths(bounds) if bounds is not None else None
    models: list[Model] = []
    broken: list[BrokenEntry] = []
    first_index: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if isinstance(entry, BrokenEntry):  # already failed before validation (generator)
            result: Model | BrokenEntry = entry
        else:
            result = _validate(entry, index, source=source, label=label, base_dir=base_dir, scope=scope,
                               paths=paths, root=root)
        if result.name is not None:
            first = first_index.setdefault(result.name, index)
            if first != index:
                raw_name = result.name[len(scope) + 1 :] if scope else result.name
                result = BrokenEntry(
                    source,
                    index,
                    result.name,
                    result.tags,
                    scope,
                    f"{_entry_ref(label, index, raw_name)}: duplicate name {raw_name!r}, "
                    f"first defined as entry {first}",
                )
        if isinstance(result, Model):
            models.append(result)
        else:
            broken.append(result)
    return LoadResult(models, broken)


def path_bounds(path: Path, root: Path) -> tuple[Path, ...]:
    """Where the paths of a models file may lead: the checkout when the file is in it, else the
    file's own folder (a file the user named with --mad-models)."""
    real_root = Path(os.path.realpath(root))
    real_file = Path(os.path.realpath(path))
    if real_file == real_root or real_root in real_file.parents:
        return (real_root,)
    return (real_file.parent,)

