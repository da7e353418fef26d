"""models.json loading, validation, discovery and tag selection.

A models file is parsed once, here, into frozen ``Model`` records. An entry that
fails validation does not stop the others: it becomes a ``BrokenEntry`` that the
collector turns into a failing test item, so the user sees every problem at once.

Compatibility notes (madengine 2.x, ``src/madengine/utils/discover_models.py``):

* Discovery: root ``models.json``; every ``scripts/<dir>/models.json`` (names become
  ``<dir>/<name>``, ``dockerfile`` and ``scripts`` are relative to ``scripts/<dir>/``);
  ``scripts/<dir>/get_models_json.py`` whose ``list_models()`` returns
  ``CustomModel`` objects (``to_dict()``, after ``update_model()``) or, here, plain dicts.
  A folder with both files is an error.
* Selection: a tag selects models whose full name equals it, whose tags contain it
  (tags a list or a comma string), or everything for ``all``; tags are ORed.
  ``name:k=v:k2`` adds ``--k v --k2`` to the model's args. ``scope/tag`` (one ``/``)
  looks only at models named ``scope/...`` and matches ``all``, a tag, or the name.
  A tag that selects nothing is an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import gc
import importlib.util
import itertools
import json
import os
import re
import shlex
import sys
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_madengine import docker_run_options
from pytest_madengine.errors import ModelsFileError, SelectionError

__all__ = [
    "BrokenEntry",
    "LoadResult",
    "Model",
    "TagSpec",
    "discover",
    "key_of",
    "load_generator_file",
    "load_models_file",
    "load_path",
    "parse_tags",
    "select",
]

MODELS_JSON = "models.json"
GENERATOR = "get_models_json.py"


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


@dataclass(frozen=True)
class TagSpec:
    """One ``--mad-tags`` tag: ``[scope/]tag[:k=v[:k2=v2...]]``."""

    text: str
    scope: str | None
    tag: str
    extra_args: tuple[str, ...]


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


# ------------------------------------------------------------------------ loading


def load_models_file(path: Path, *, base_dir: Path | None = None, scope: str | None = None,
                     bounds: Sequence[Path] | None = None, root: Path | None = None) -> LoadResult:
    """Load a JSON models file: a list of entries, each validated on its own."""
    path = Path(path)
    label = _label(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ModelsFileError(f"{label}: cannot be read: {exc.strerror or _one_line(exc)}") from exc
    except UnicodeDecodeError as exc:
        raise ModelsFileError(f"{label}: is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    # Parsing and validating create many objects and no cycles: the cyclic garbage
    # collector would only rescan them (about a third of the time on a 10,000-entry file).
    with _collector_paused():
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelsFileError(f"{label}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
        if not isinstance(data, list):
            kind = "an object" if isinstance(data, dict) else f"a {type(data).__name__}"
            raise ModelsFileError(f"{label}: must hold a JSON list of model entries, got {kind}")
        return _build(
            data,
            source=path,
            label=label,
            base_dir=path.parent if base_dir is None else Path(base_dir),
            scope=scope,
            bounds=bounds,
            root=root,
        )


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# A stand-in for madengine's CustomModel, so that generators written for madengine
# (``from madengine.utils.discover_models import CustomModel``) load without it.


@dataclass
class _CustomModel:
    name: str
    dockerfile: str = ""
    dockercontext: str = ""
    scripts: str = ""
    url: str = ""
    cred: str = ""
    owner: str = ""
    data: str = ""
    n_gpus: str = "-1"
    timeout: int = 7200
    training_precision: str = ""
    tags: list[str] = field(default_factory=list)
    args: str = ""
    multiple_results: str = ""
    skip_gpu_arch: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def update_model(self) -> None:
        """Subclasses override this to fill in fields after construction."""


_CustomModel.__name__ = _CustomModel.__qualname__ = "CustomModel"

_SHIM_MODULES = (
    "madengine",
    "madengine.utils",
    "madengine.utils.discover_models",
    "madengine.tools",
    "madengine.tools.discover_models",
)


def _install_madengine_shim() -> list[str]:
    """Provide ``madengine.{utils,tools}.discover_models.CustomModel`` if madengine is absent."""
    if "madengine" in sys.modules:
        return []
    try:
        if importlib.util.find_spec("madengine") is not None:
            return []
    except (ImportError, ValueError):
        pass
    installed: list[str] = []
    for name in _SHIM_MODULES:
        module = types.ModuleType(name)
        if not name.endswith("discover_models"):
            module.__path__ = []  # a package
        else:
            module.CustomModel = _CustomModel  # type: ignore[attr-defined]
        sys.modules[name] = module
        installed.append(name)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
    return installed


_generator_ids = itertools.count()


def _is_within(file: str, folder: str) -> bool:
    return file.startswith(folder + os.sep)


def _entry_from_object(obj: Any, scope: str | None = None) -> dict[str, Any]:
    """madengine's CustomModel (or anything like it) -> a plain dict, as madengine does:
    ``update_model()`` runs with the scoped name (``<dir>/<name>``) already set, and a name
    it changes is ignored (madengine names the model before the call)."""
    if isinstance(obj, Mapping):
        return dict(obj)
    name = getattr(obj, "name", None)
    update = getattr(obj, "update_model", None)
    if callable(update):
        if scope and isinstance(name, str):
            try:
                obj.name = f"{scope}/{name}"
            except AttributeError:
                pass  # a frozen object: it sees its own name
        update()
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        result = to_dict()
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        result = dataclasses.asdict(obj)
    else:
        raise TypeError(f"expected a dict or an object with to_dict(), got {type(obj).__name__}")
    if not isinstance(result, Mapping):
        raise TypeError(f"to_dict() returned {type(result).__name__}, not a dict")
    out = dict(result)
    if isinstance(name, str):
        out["name"] = name
    return out


def load_generator_file(path: Path, *, scope: str, bounds: Sequence[Path] | None = None,
                        root: Path | None = None) -> LoadResult:
    """Import ``scripts/<dir>/get_models_json.py`` and validate what ``list_models()`` returns."""
    path = Path(path)
    label = _label(path)
    folder = str(path.parent.absolute())
    safe_scope = re.sub(r"\W", "_", scope)
    module_name = f"_pytest_madengine_generator_{safe_scope}_{next(_generator_ids)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelsFileError(f"{label}: cannot be imported as a Python module")

    before = set(sys.modules)
    shim = _install_madengine_shim()
    sys.path.insert(0, folder)
    # No __pycache__ left in the model zoo's folders (they are mounted into containers).
    write_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    entries: list[Any] = []
    try:
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            raise ModelsFileError(f"{label}: importing it failed: {_one_line(exc)}") from exc
        list_models = getattr(module, "list_models", None)
        if not callable(list_models):
            raise ModelsFileError(f"{label}: defines no list_models() function")
        try:
            returned = list_models()
        except (Exception, SystemExit) as exc:
            raise ModelsFileError(f"{label}: list_models() raised {_one_line(exc)}") from exc
        if isinstance(returned, (str, bytes, Mapping)) or not isinstance(returned, Iterable):
            raise ModelsFileError(f"{label}: list_models() must return a list of models, got {type(returned).__name__}")
        try:
            items = list(returned)
        except Exception as exc:
            raise ModelsFileError(f"{label}: list_models() result cannot be iterated: {_one_line(exc)}") from exc
        for index, obj in enumerate(items):
            try:
                entries.append(_entry_from_object(obj, scope))
            except Exception as exc:  # noqa: BLE001  # user code: any failure breaks this entry only
                name = getattr(obj, "name", None)
                name = name if isinstance(name, str) and name.strip() else None
                tags = getattr(obj, "tags", ())
                tags = _check_str_list(tags)[0] if isinstance(tags, (list, str)) else ()
                entries.append(
                    BrokenEntry(
                        path,
                        index,
                        _prefixed(name, scope) if name else None,
                        tags or (),
                        scope,
                        f"{_entry_ref(label, index, name)}: {_one_line(exc)}",
                    )
                )
    finally:
        sys.dont_write_bytecode = write_bytecode
        try:
            sys.path.remove(folder)
        except ValueError:
            pass
        for name in shim:
            sys.modules.pop(name, None)
        # Forget the generator and the helpers it imported from its own folder, so that
        # another scripts/<dir>/ with a same-named helper gets its own.
        for name in set(sys.modules) - before:
            if name == module_name:
                sys.modules.pop(name, None)
                continue
            file = getattr(sys.modules.get(name), "__file__", None)
            if file and _is_within(os.path.abspath(file), folder):
                sys.modules.pop(name, None)

    return _build(entries, source=path, label=label, base_dir=path.parent, scope=scope, bounds=bounds, root=root)


def discover(root: Path) -> list[Path]:
    """Models files under ``root``: ``models.json``, then ``scripts/<dir>/`` files by dir name."""
    root = Path(root)
    found: list[Path] = []
    top = root / MODELS_JSON
    if top.is_file():
        found.append(top)
    scripts = root / "scripts"
    try:
        dirs = sorted(e.name for e in os.scandir(scripts) if e.is_dir())
    except OSError:
        return found
    for name in dirs:
        folder = scripts / name
        for filename in (MODELS_JSON, GENERATOR):
            candidate = folder / filename
            if candidate.is_file():
                found.append(candidate)
    return found


def load_path(path: Path, root: Path) -> LoadResult:
    """Load one file found by ``discover`` (or named by the user) with the right scope and base."""
    path = Path(path)
    root = Path(root)
    absolute = path.absolute()
    root_abs = root.absolute()
    folder = absolute.parent
    in_scripts_dir = folder.parent == root_abs / "scripts"
    bounds = path_bounds(path, root)

    if path.name == GENERATOR:
        sibling = path.parent / MODELS_JSON
        if sibling.is_file():
            raise ModelsFileError(f"{_label(path.parent)}: holds both {MODELS_JSON} and {GENERATOR}; keep only one")
        return load_generator_file(path, scope=folder.name, bounds=bounds, root=root_abs)
    if path.name == MODELS_JSON and folder == root_abs:
        return load_models_file(path, base_dir=root, scope=None, bounds=bounds, root=root_abs)
    if path.name == MODELS_JSON and in_scripts_dir:
        return load_models_file(path, base_dir=path.parent, scope=folder.name, bounds=bounds, root=root_abs)
    return load_models_file(path, base_dir=path.parent, scope=None, bounds=bounds, root=root_abs)


def path_bounds(path: Path, root: Path) -> tuple[Path, ...]:
    """Where the paths of a models file may lead: the checkout when the file is in it, else the
    file's own folder (a file the user named with --mad-models)."""
    real_root = Path(os.path.realpath(root))
    real_file = Path(os.path.realpath(path))
    if real_file == real_root or real_root in real_file.parents:
        return (real_root,)
    return (real_file.parent,)


# ---------------------------------------------------------------------- selection


def _parse_one(text: str) -> TagSpec:
    parts = [p.strip() for p in text.split(":")]
    head = parts[0]
    if not head:
        raise SelectionError(f"--mad-tags: {text!r} has no tag or model name before ':'")
    extra: list[str] = []
    for part in parts[1:]:
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise SelectionError(f"--mad-tags: {text!r}: extra argument {part!r} has no name before '='")
        extra.append(f"--{key}")
        if sep:
            extra.append(value.strip())
    scope: str | None = None
    tag = head
    if head.count("/") == 1:
        left, _, right = head.partition("/")
        if left and right:
            scope, tag = left, right
    return TagSpec(text=text, scope=scope, tag=tag, extra_args=tuple(extra))


def parse_tags(values: Sequence[str]) -> list[TagSpec]:
    """``--mad-tags`` values (each may hold comma-separated tags) -> specs; [] means no selection."""
    specs: list[TagSpec] = []
    for value in values:
        for text in value.split(","):
            text = text.strip()
            if text:
                specs.append(_parse_one(text))
    return specs


def spec_name(spec: TagSpec) -> str:
    """The tag as a full model or item name (``scope/tag``)."""
    return f"{spec.scope}/{spec.tag}" if spec.scope else spec.tag


def key_of(c: Model | BrokenEntry) -> str:
    """The key a candidate has in ``select``'s result: its name, or ``source#index``."""
    return c.name if c.name is not None else f"{c.source}#{c.index}"


def _matches(
    spec: TagSpec, by_name: dict[str, list[int]], by_tag: dict[str, list[int]], names: list[str | None], every: range
) -> Iterable[int]:
    """Indices of the candidates one spec selects."""
    if spec.scope is None:
        if spec.tag == "all":
            return every
        return itertools.chain(by_name.get(spec.tag, ()), by_tag.get(spec.tag, ()))
    prefix = spec.scope + "/"
    in_scope = [i for i in every if (n := names[i]) is not None and n.startswith(prefix)]
    full = prefix + spec.tag
    if spec.tag == "all":
        hits: Iterable[int] = in_scope
    else:
        tagged = set(by_tag.get(spec.tag, ()))
        hits = [i for i in in_scope if i in tagged or names[i] == full]
    # A tag written literally with a '/' also selects (older madengine matched it whole).
    return itertools.chain(hits, by_tag.get(full, ()), by_name.get(full, ()))


def _suggestions(spec: TagSpec, vocabulary: Sequence[str]) -> list[str]:
    """Up to 5 names or tags close to what the user wrote (case ignored)."""
    word = spec.text.split(":", 1)[0].strip().lower()
    by_lower: dict[str, str] = {}
    for known in vocabulary:
        by_lower.setdefault(known.lower(), known)
    return [by_lower[w] for w in difflib.get_close_matches(word, list(by_lower), n=5, cutoff=0.6)]


def select(candidates: Sequence[Model | BrokenEntry], specs: Sequence[TagSpec]) -> dict[str, tuple[str, ...]]:
    """Apply tags to candidates: ``{key_of(candidate): extra_args}`` in candidate order.

    No specs selects everything. Broken entries without a name are always selected, so
    their failure is reported. Extra args from every tag that selects a candidate are
    concatenated in tag order; an identical contribution is added once.
    """
    if not specs:
        return {key_of(c): () for c in candidates}

    names: list[str | None] = [c.name for c in candidates]
    by_name: dict[str, list[int]] = {}
    by_tag: dict[str, list[int]] = {}
    for i, c in enumerate(candidates):
        if c.name is not None:
            by_name.setdefault(c.name, []).append(i)
        for t in dict.fromkeys(c.tags):
            by_tag.setdefault(t, []).append(i)
    every = range(len(candidates))

    chosen: dict[int, list[tuple[str, ...]]] = {}
    unmatched: list[TagSpec] = []
    for spec in specs:
        hit = False
        for i in _matches(spec, by_name, by_tag, names, every):
            hit = True
            contributions = chosen.setdefault(i, [])
            if spec.extra_args and spec.extra_args not in contributions:
                contributions.append(spec.extra_args)
        if not hit:
            unmatched.append(spec)

    if unmatched:
        vocabulary = sorted({n for n in names if n is not None} | set(by_tag))
        lines = []
        for spec in unmatched:
            where = f" in scope {spec.scope!r}" if spec.scope else ""
            line = f"--mad-tags: {spec.text!r} matches no model name or tag{where}"
            close = _suggestions(spec, vocabulary)
            if close:
                line += f"; closest: {', '.join(close)}"
            lines.append(line)
        raise SelectionError("\n".join(lines))

    result: dict[str, tuple[str, ...]] = {}
    for i, c in enumerate(candidates):
        if i in chosen:
            result[key_of(c)] = tuple(itertools.chain.from_iterable(chosen[i]))
        elif c.name is None:
            result[key_of(c)] = ()
    return result
