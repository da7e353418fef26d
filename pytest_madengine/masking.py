"""Which names and values are secret, and how they are shown: the one rule that plans, logs,
reports, manifests and the secret environment of containers and SLURM jobs all use.

A variable is secret when its name looks secret (``*PASSWORD*``, ``*TOKEN*``, ``*SECRET*``,
``*KEY*``, ... any case; ``MAD_SECRETS*`` included) or when its value holds a value the user
marked secret (a ``MAD_SECRETS*`` variable's value) or another known secret (a registry or
data-provider password). Values of 1-3 characters are never taken for secrets: masking them
would blank out ordinary text.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

MASK = "***"
SECRET_MARKERS = ("PASSWORD", "PASSWD", "TOKEN", "SECRET", "KEY", "CREDENTIAL", "PRIVATE")
MARKED_PREFIX = "MAD_SECRETS"
MIN_SECRET_LEN = 4


def looks_secret(name: str) -> bool:
    upper = name.upper()
    return any(m in upper for m in SECRET_MARKERS)


def marked_secrets(env: Mapping[str, str] | None = None) -> list[str]:
    """Values the user marked secret: those of ``MAD_SECRETS*`` variables, longest first."""
    env = os.environ if env is None else env
    return sorted({v for k, v in env.items() if k.startswith(MARKED_PREFIX) and len(v) >= MIN_SECRET_LEN},
                  key=len, reverse=True)


def usable(values: Iterable[str]) -> tuple[str, ...]:
    """Known secrets worth looking for, longest first (so a longer one is masked whole)."""
    return tuple(sorted({v for v in values if v and len(v) >= MIN_SECRET_LEN}, key=len, reverse=True))


def holds_secret(value: str, known: Iterable[str]) -> bool:
    return any(s in value for s in known)


def is_secret(name: str, value: str, known: Iterable[str] = ()) -> bool:
    """The rule: a secret-looking name, or a value holding a known (or marked) secret."""
    return looks_secret(name) or holds_secret(value, known)


def mask_text(text: str, known: Iterable[str]) -> str:
    for secret in usable(known):
        text = text.replace(secret, MASK)
    return text


def shown_value(name: str, value: str, known: Iterable[str] = ()) -> str:
    """A value as we print it: masked whole under a secret-looking name, else with every known
    or marked secret in it masked."""
    if looks_secret(name):
        return MASK
    return mask_text(value, (*marked_secrets(), *known))
