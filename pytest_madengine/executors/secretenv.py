"""The secret part of a model's environment, kept out of what others can read.

A container's config (``docker inspect``: Config.Env, Cmd, Entrypoint, Labels) and a SLURM
job's scripts are readable by anyone who can list containers or read the job folder, for as
long as they exist. So the variables that ``masking`` calls secret travel apart: written to a
0600 file (``write``), which the first command of the container or SLURM task sources and
deletes before it execs the usual command (``loader``, ``source_lines``: fixed text, no value
in any argv). The executor that wrote the file removes it again on every path.

Known secrets, besides what a name says: the ``MAD_SECRETS*`` values of the host environment,
the data providers' logins (``NAS_NODES``, ``MAD_MINIO``, ``MAD_AWS_S3``) and every
secret-looking string of ``credential.json`` (registry passwords, tokens).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pytest_madengine import masking
from pytest_madengine.data import credentials as data_credentials
from pytest_madengine.data.config import DataError

ENV_FILE = ".mad-secret-env"  # in the run folder (the container's working dir)
LOADER_NAME = "mad-secret-env"  # $0 of the loader, what `ps` shows
MISSING_EXIT = 125  # as docker's own "the container could not run its command"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _secret_leaves(node: Any, key: str = "") -> Iterator[str]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _secret_leaves(v, str(k))
    elif isinstance(node, list):
        for v in node:
            yield from _secret_leaves(v, key)
    elif isinstance(node, str | int) and not isinstance(node, bool) and masking.looks_secret(key):
        yield str(node)


def known_secrets(workspace: Path, env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Secret values a variable may hold under a name that does not say so (longest first)."""
    env = os.environ if env is None else env
    found = list(masking.marked_secrets(env))
    try:
        found += data_credentials.load(workspace, env).secrets()
    except DataError:
        pass  # the data step names the broken entry; nothing is known from it here
    try:
        found += _secret_leaves(json.loads((workspace / data_credentials.CREDENTIAL_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        pass
    for name in ("NAS_NODES", "MAD_MINIO", "MAD_AWS_S3", "MAD_DOCKERHUB_PASSWORD"):
        raw = env.get(name, "")
        if name == "MAD_DOCKERHUB_PASSWORD":
            found.append(raw)
            continue
        try:
            found += _secret_leaves(json.loads(raw)) if raw else []
        except ValueError:
            pass
    return masking.usable(found)


def split(env: Mapping[str, str], known: tuple[str, ...]) -> tuple[dict[str, str], dict[str, str]]:
    """(plain, secret) by ``masking.is_secret``; together they are ``env``."""
    plain: dict[str, str] = {}
    secret: dict[str, str] = {}
    for k, v in env.items():
        (secret if masking.is_secret(k, v, known) else plain)[k] = v
    return plain, secret


def bad_names(secret: Mapping[str, str]) -> list[str]:
    """Names a shell cannot export (the file is sourced by bash)."""
    return [k for k in secret if not _NAME.fullmatch(k)]


def file_text(secret: Mapping[str, str]) -> str:
    bad = bad_names(secret)
    if bad:
        raise ValueError(f"secret variable name {bad[0]!r} cannot be exported by a shell "
                         "(letters, digits and _, not starting with a digit)")
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(secret.items()))


def write(path: Path, secret: Mapping[str, str]) -> None:
    """The file, mode 0600 from its creation (never readable by others, not even for an
    instant); an old one (a killed run's) is replaced, a link is never followed."""
    text = file_text(secret)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # a file system gone away: nothing more can be done from here


def source_lines(path_word: str) -> list[str]:
    """Script lines that source the file at ``path_word`` (a shell word, quoted by the caller),
    delete it, and end the script when it cannot be read."""
    return [
        f"MAD_SECRET_FILE={path_word}",
        'if ! . "$MAD_SECRET_FILE"; then',
        '  echo "pytest-madengine: cannot read the secret environment $MAD_SECRET_FILE" >&2',
        f'  rm -f "$MAD_SECRET_FILE"; exit {MISSING_EXIT}',
        "fi",
        'rm -f "$MAD_SECRET_FILE"; unset MAD_SECRET_FILE',
    ]


def loader(path_word: str = "./" + ENV_FILE) -> tuple[str, ...]:
    """The command put before a container's own: ``bash -c <fixed text> mad-secret-env "$@"``;
    it sources and deletes the file, then ``exec``s the rest (exit code and signals unchanged)."""
    return ("bash", "-c", "\n".join([*source_lines(path_word), 'exec "$@"']), LOADER_NAME)
