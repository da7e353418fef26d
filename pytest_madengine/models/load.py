"""Finding and reading models files: the root ``models.json``, ``scripts/<dir>/models.json``,
``scripts/<dir>/get_models_json.py`` generators (madengine's ``CustomModel``, with a stand-in
when madengine is not installed), each loaded on its own."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib.util
import itertools
import json
import os
import re
import sys
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_madengine.errors import ModelsFileError
from pytest_madengine.models.schema import (
    BrokenEntry,
    LoadResult,
    _build,
    _check_str_list,
    _entry_ref,
    _label,
    _one_line,
    _prefixed,
    path_bounds,
)

MODELS_JSON = "models.json"
GENERATOR = "get_models_json.py"

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

