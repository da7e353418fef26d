"""Where the NAS and S3 providers log in: madengine's ``NAS_NODES``, ``MAD_MINIO`` and
``MAD_AWS_S3``, each from the environment (a JSON string) or else ``credential.json`` in the
checkout. Pure apart from reading that file.

Secrets live in fields hidden from ``repr`` and only ever reach a child process's
environment (``SSHPASS``, ``AWS_SECRET_ACCESS_KEY``); messages never quote the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_madengine.data.config import DataError

CREDENTIAL_FILE = "credential.json"
MINIO_DEFAULT_ENDPOINT = "http://localhost:9000"  # madengine's
AWS_REGION = "us-east-2"  # madengine's, fixed there; MAD_AWS_S3's REGION changes it here


@dataclass(frozen=True)
class NasNode:
    name: str
    host: str
    port: int
    username: str
    password: str = field(default="", repr=False)  # "" = key-based ssh (BatchMode)


@dataclass(frozen=True)
class S3Login:
    endpoint: str  # "" = AWS's own
    region: str
    username: str = field(default="", repr=False)  # the access key id
    password: str = field(default="", repr=False)  # the secret access key


@dataclass(frozen=True)
class Credentials:
    nas: tuple[NasNode, ...] = ()
    nas_origin: str = ""
    minio: S3Login = S3Login(MINIO_DEFAULT_ENDPOINT, AWS_REGION)
    aws: S3Login = S3Login("", AWS_REGION)

    def secrets(self) -> tuple[str, ...]:
        """Every secret value, for scrubbing text we show."""
        out = [n.password for n in self.nas] + [self.minio.password, self.aws.password,
                                                 self.minio.username, self.aws.username]
        return tuple(s for s in out if s and len(s) >= 4)


def _entry(name: str, file_entries: Mapping[str, Any], env: Mapping[str, str], path: Path) -> tuple[Any, str]:
    if name in env:
        try:
            return json.loads(env[name]), f"environment variable {name}"
        except json.JSONDecodeError as exc:  # the position only: the text holds passwords
            raise DataError(f"environment variable {name}: not valid JSON (column {exc.colno})") from None
    if name in file_entries:
        return file_entries[name], f"{path} entry '{name}'"
    return None, ""


def _text(raw: Mapping[str, Any], key: str, where: str, default: str = "") -> str:
    value = raw.get(key, default)
    if value is None:
        return default
    if not isinstance(value, (str, int)):
        raise DataError(f"{where}: field {key!r} must be a string")
    return str(value)


def _s3(raw: Any, where: str, endpoint_keys: tuple[str, ...], default_endpoint: str) -> S3Login:
    if raw is None:
        return S3Login(default_endpoint, AWS_REGION)
    if not isinstance(raw, Mapping):
        raise DataError(f"{where} must be an object with USERNAME and PASSWORD")
    endpoint = next((_text(raw, k, where) for k in endpoint_keys if raw.get(k)), default_endpoint)
    return S3Login(endpoint=endpoint, region=_text(raw, "REGION", where, AWS_REGION) or AWS_REGION,
                   username=_text(raw, "USERNAME", where), password=_text(raw, "PASSWORD", where))


def load(workspace: Path, env: Mapping[str, str] | None = None) -> Credentials:
    """The data providers' logins; DataError naming the variable or file entry (never its value)."""
    env = os.environ if env is None else env
    path = workspace / CREDENTIAL_FILE
    file_entries: Mapping[str, Any] = {}
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        loaded = {}
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno})") from None
    if not isinstance(loaded, dict):
        raise DataError(f"{path}: must be a JSON object")
    file_entries = loaded
    raw_nas, nas_where = _entry("NAS_NODES", file_entries, env, path)
    nodes: list[NasNode] = []
    if raw_nas is not None:
        if not isinstance(raw_nas, list):
            raise DataError(f"{nas_where} must be a list of {{NAME, HOST, PORT, USERNAME, PASSWORD}}")
        for i, node in enumerate(raw_nas):
            where = f"{nas_where} item {i}"
            if not isinstance(node, Mapping) or not node.get("HOST") or not node.get("USERNAME"):
                raise DataError(f"{where} must be an object with HOST and USERNAME (PORT, PASSWORD, NAME optional)")
            port_text = _text(node, "PORT", where, "22")
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise DataError(f"{where}: field 'PORT' must be a port number")
            nodes.append(NasNode(name=_text(node, "NAME", where) or f"node{i}", host=_text(node, "HOST", where),
                                 port=int(port_text), username=_text(node, "USERNAME", where),
                                 password=_text(node, "PASSWORD", where)))
    raw_minio, minio_where = _entry("MAD_MINIO", file_entries, env, path)
    raw_aws, aws_where = _entry("MAD_AWS_S3", file_entries, env, path)
    return Credentials(
        nas=tuple(nodes), nas_origin=nas_where,
        minio=_s3(raw_minio, minio_where, ("MINIO_ENDPOINT", "AWS_ENDPOINT_URL_S3"), MINIO_DEFAULT_ENDPOINT),
        aws=_s3(raw_aws, aws_where, ("AWS_ENDPOINT_URL_S3", "ENDPOINT"), ""),
    )


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    for s in secrets:
        text = text.replace(s, "***")
    return text
