"""``data.json`` and the context's ``data`` key, checked (pure apart from reading the file).

Format (madengine's): ``{"<dataname>": {"<provider>": {"path": ..., ...}, ...}, ...}``. The
context's ``data`` replaces whole dataname entries. Providers are tried in madengine's fixed
order, whatever the order in the file. A malformed entry fails only the models that need it.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_madengine.errors import UsageError

PROVIDER_ORDER = ("custom", "local", "minio", "nas", "aws")  # madengine's, fixed
DEFAULT_HOME = "/data_dlm"  # madengine's container path, suffixed with _<index>
DATA_FILE = "data.json"
_FIELDS = {
    "custom": {"path", "args", "home", "mirrorlocal"},
    "local": {"path", "home", "readwrite"},
    "minio": {"path", "home", "mirrorlocal"},
    "nas": {"path", "home", "mirrorlocal"},
    "aws": {"path", "home", "mirrorlocal"},
}


class DataError(UsageError):
    """A dataname cannot be served: a malformed entry, or no provider could serve it."""


@dataclass(frozen=True)
class Source:
    """One provider entry of one dataname."""

    dataname: str
    provider: str
    path: str
    where: str  # "data.json entry 'x', provider 'nas'", for messages
    home: str = ""  # container path; "" = madengine's /data_dlm_<index>
    readwrite: bool = False  # local only
    args: tuple[str, ...] = ()  # custom only
    mirrorlocal: str = ""  # host folder; "" = none


@dataclass(frozen=True)
class DataConfig:
    """The datanames known: each raw entry with where it came from."""

    entries: Mapping[str, tuple[str, Any]] = field(default_factory=dict)  # name -> (origin, raw entry)
    origin: str = ""  # the file read ("" when none), for messages
    force_mirror: str = ""  # --mad-force-mirror-local: every non-local provider's mirrorlocal

    def sources(self, dataname: str) -> tuple[Source, ...]:
        """The entry's providers in madengine's order; DataError naming the entry and field."""
        if dataname not in self.entries:
            known = ", ".join(sorted(self.entries)[:20]) or "none"
            where = self.origin or f"no {DATA_FILE} and no context key 'data'"
            raise DataError(f"dataname '{dataname}' is not defined ({where}; datanames defined: {known})")
        origin, raw = self.entries[dataname]
        where = f"{origin} entry '{dataname}'"
        if not isinstance(raw, Mapping) or not raw:
            raise DataError(f"{where} must be an object of providers ({', '.join(PROVIDER_ORDER)}), got {raw!r}")
        unknown = sorted(str(k) for k in raw if k not in PROVIDER_ORDER)
        if unknown:
            raise DataError(f"{where}: unknown provider {unknown[0]!r} (known: {', '.join(PROVIDER_ORDER)})")
        return tuple(_source(dataname, p, raw[p], f"{where}, provider '{p}'", self.force_mirror)
                     for p in PROVIDER_ORDER if p in raw)


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise DataError(f"{where}: field 'readwrite' must be true or false, got {value!r}")


def _source(dataname: str, provider: str, raw: Any, where: str, force_mirror: str) -> Source:
    if not isinstance(raw, Mapping):
        raise DataError(f"{where} must be an object with a 'path', got {raw!r}")
    extra = sorted(str(k) for k in raw if k not in _FIELDS[provider])
    if "mirrorlocal" in extra and provider == "local":
        raise DataError(f"{where}: field 'mirrorlocal' is not allowed for the local provider (it is mounted as it is)")
    if extra:
        raise DataError(f"{where}: unknown field {extra[0]!r} (known: {', '.join(sorted(_FIELDS[provider]))})")
    for key in ("path", "home", "mirrorlocal", "args"):
        if key in raw and not isinstance(raw[key], str):
            raise DataError(f"{where}: field {key!r} must be a string, got {raw[key]!r}")
    path = str(raw.get("path") or "")
    if not path:
        raise DataError(f"{where}: field 'path' is missing or empty")
    if provider in ("minio", "aws") and not path.startswith("s3://"):
        raise DataError(f"{where}: field 'path' must be an s3:// URL, got {path!r}")
    home = str(raw.get("home") or "")
    if home and (not home.startswith("/") or "\n" in home or "," in home):
        raise DataError(f"{where}: field 'home' must be an absolute container path without commas, got {home!r}")
    try:
        args = tuple(shlex.split(str(raw.get("args") or "")))
    except ValueError as exc:
        raise DataError(f"{where}: field 'args' cannot be split ({exc})") from None
    mirror = str(raw.get("mirrorlocal") or "")
    if force_mirror and provider != "local":
        mirror = force_mirror
    return Source(dataname=dataname, provider=provider, path=path, where=where, home=home,
                  readwrite=_flag(raw.get("readwrite", False), where), args=args, mirrorlocal=mirror)


def load(path: Path, explicit: bool, context_data: Any, force_mirror: Path | None) -> DataConfig:
    """``path`` (``--mad-data-config``; a missing default file is no error), then the context's
    ``data`` over it. UsageError naming the file or key when either is not a JSON object."""
    entries: dict[str, tuple[str, Any]] = {}
    origin = ""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise DataError(f"--mad-data-config {path}: no such file") from None
        text = None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if text is not None:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno})") from None
        if not isinstance(raw, dict):
            raise DataError(f"{path}: must be a JSON object of datanames, got {type(raw).__name__}")
        origin = str(path)
        entries.update((str(k), (str(path), v)) for k, v in raw.items())
    if context_data not in (None, {}):
        if not isinstance(context_data, Mapping):
            raise DataError(f"context key 'data' must be an object of datanames, got {context_data!r}")
        entries.update((str(k), ("context key 'data'", v)) for k, v in context_data.items())
        origin = f"{origin} and context key 'data'" if origin else "context key 'data'"
    return DataConfig(entries=entries, origin=origin, force_mirror=str(force_mirror) if force_mirror else "")


def datanames(field_value: str, where: str) -> tuple[str, ...]:
    """The model's ``data`` field: a comma list of datanames (empty entries are an error)."""
    if not field_value.strip():
        return ()
    names = tuple(n.strip() for n in field_value.split(","))
    if any(not n for n in names):
        raise DataError(f"{where}: field 'data' has an empty dataname in {field_value!r}")
    if len(set(names)) != len(names):
        raise DataError(f"{where}: field 'data' names a dataname twice in {field_value!r}")
    return names
