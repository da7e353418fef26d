"""Registry credentials and image references. Pure apart from reading credential.json.

madengine's ``credential.json`` (in the workspace) holds one top-level entry per registry
host, ``{"username": ..., "password": ...}``, and ``dockerhub`` for Docker Hub; the env vars
``MAD_DOCKERHUB_USER`` / ``MAD_DOCKERHUB_PASSWORD`` override the ``dockerhub`` entry.

Passwords only ever travel to ``DockerClient.login`` / the pull's auth config. ``Credential``
hides its password from ``repr``, and ``redact`` scrubs known secrets from any text we show.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_madengine.errors import ExecutorError

DOCKER_HUB = "docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com",
                          "dockerhub"})
CREDENTIAL_FILE = "credential.json"


class CredentialError(ExecutorError):
    """credential.json cannot be used (never quotes its content)."""


@dataclass(frozen=True)
class Credential:
    registry: str
    username: str
    password: str = field(repr=False)
    source: str = ""  # where it came from, for messages: "credential.json 'dockerhub'", "MAD_DOCKERHUB_*"


def split_reference(image: str) -> tuple[str, str]:
    """(registry host, the rest) of an image reference; Docker Hub images give "docker.io".

    Docker's rule: the first path component is a host when the reference has a ``/`` and that
    component holds a ``.`` or ``:`` or is ``localhost``."""
    first, sep, rest = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return DOCKER_HUB, image


def registry_of(image: str) -> str:
    return split_reference(image)[0]


def is_hub(host: str) -> bool:
    """Docker Hub under any of its names (``docker.io``, ``https://index.docker.io/v1/``, ``dockerhub``)."""
    return _normal_host(host).lower() in _HUB_ALIASES


def _normal_host(key: str) -> str:
    host = key.strip()
    for scheme in ("https://", "http://"):
        if host.lower().startswith(scheme):
            host = host[len(scheme):]
    return host.rstrip("/").split("/", 1)[0]


def load_credentials(workspace: Path) -> tuple[dict[str, Any], str]:
    """(entries, path) of ``<workspace>/credential.json``; ({}, path) when there is none."""
    path = workspace / CREDENTIAL_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, str(path)
    except OSError as exc:
        raise CredentialError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # The position only: the text may hold passwords.
        raise CredentialError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, dict):
        raise CredentialError(f"{path}: must hold a JSON object with one entry per registry, got {type(data).__name__}")
    return data, str(path)


def credential_for(host: str, entries: Mapping[str, Any], env: Mapping[str, str] | None = None,
                   origin: str = CREDENTIAL_FILE) -> Credential | None:
    """The login for registry ``host``: env ``MAD_DOCKERHUB_*`` then the ``dockerhub`` entry for
    Docker Hub; the entry keyed by the host (with or without scheme) for any other registry."""
    env = os.environ if env is None else env
    if is_hub(host):
        user, password = env.get("MAD_DOCKERHUB_USER", ""), env.get("MAD_DOCKERHUB_PASSWORD", "")
        if user and password:
            return Credential(DOCKER_HUB, user, password, "env MAD_DOCKERHUB_USER/MAD_DOCKERHUB_PASSWORD")
        keys = [k for k in entries if is_hub(k)]
    else:
        want = _normal_host(host).lower()
        keys = [k for k in entries if _normal_host(k).lower() == want]
    for key in keys:
        entry = entries[key]
        if not isinstance(entry, Mapping):
            raise CredentialError(f"{origin}: entry '{key}' must be an object with username and password")
        entry_user, entry_password = entry.get("username"), entry.get("password")
        if not entry_user or not entry_password:
            raise CredentialError(f"{origin}: entry '{key}' needs both 'username' and 'password'")
        return Credential(DOCKER_HUB if is_hub(host) else host, str(entry_user), str(entry_password),
                          f"{origin} '{key}'")
    return None


def login_registry(host: str) -> str | None:
    """What to give ``DockerClient.login(registry=...)``: None for Docker Hub (its default)."""
    return None if is_hub(host) else host


def secrets_of(entries: Mapping[str, Any], env: Mapping[str, str] | None = None) -> set[str]:
    """Every password-like value known to this run, for ``redact``."""
    env = os.environ if env is None else env
    out: set[str] = set()

    def walk(value: Any, key: str = "") -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, str) and key.lower() in ("password", "token", "secret", "key", "auth") and value:
            out.add(value)

    walk(entries)
    for name, value in env.items():
        if value and (name in ("MAD_DOCKERHUB_PASSWORD", "MAD_REGISTRY_PASSWORD") or name.startswith("MAD_SECRETS")):
            out.add(value)
    return {s for s in out if len(s) >= 4}  # a 1-3 character "secret" would blank out ordinary text


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text
