"""madengine's tag selection: ``--mad-tags`` parsed into specs, applied to candidates."""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pytest_madengine.errors import SelectionError
from pytest_madengine.models.schema import BrokenEntry, Model


@dataclass(frozen=True)
class TagSpec:
    """One ``--mad-tags`` tag: ``[scope/]tag[:k=v[:k2=v2...]]``."""

    text: str
    scope: str | None
    tag: str
    extra_args: tuple[str, ...]


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
