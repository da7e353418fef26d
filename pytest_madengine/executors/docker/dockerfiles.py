"""Which Dockerfile a model builds, and what it builds from. Pure: reads files, changes nothing.

madengine (``execution/docker_builder.py``, ``core/context.py::filter``) lists ``PREFIX.*``
for a model's ``dockerfile`` prefix, reads ``# CONTEXT {...}`` from each file's first five
lines, and keeps the files whose header agrees with the run context; it then builds *every*
file that is left and says nothing when none is. We do the same, one item per file, and fail
a model none of whose files match with every candidate, its header and the context values
it was compared with.

Matching, as madengine: a header key the run context does not have constrains nothing; a key
it has must be equal (here case-insensitively, as text). Every matching file is built and run
(one test item each); a file without a header is used only when it is its prefix's sole one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_madengine.errors import DockerfileError
from pytest_madengine.literals import LiteralError, parse_dict_literal

HEADER_LINES = 5  # madengine: `head -n5 FILE | grep '# CONTEXT '`
_HEADER = re.compile(r"^\s*#\s*CONTEXT(?:\s+|(?=\{))(?P<body>.*?)\s*$")
_ARG = re.compile(r"^\s*ARG\s+(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:=(?P<value>.*))?$", re.I)
_FROM = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(?P<image>\S+)", re.I)


@dataclass(frozen=True)
class Candidate:
    path: Path
    header: Mapping[str, Any] | None = field(default=None, hash=False)  # None: no `# CONTEXT` line

    def describe(self) -> str:
        return f"{self.path} {dict(self.header) if self.header is not None else '(no CONTEXT header)'}"


def parse_header(text: str, path: Path | str = "Dockerfile") -> dict[str, Any] | None:
    """The ``# CONTEXT {...}`` dict in the first lines of ``text``; None when there is none.

    The dict is read as JSON or a Python literal, never evaluated as code."""
    for line in text.splitlines()[:HEADER_LINES]:
        m = _HEADER.match(line)
        if not m:
            continue
        body = m.group("body")
        try:
            value = parse_dict_literal(body)
        except LiteralError as exc:
            raise DockerfileError(f"{path}: the '# CONTEXT' header is {exc}") from None
        return value
    return None


def candidate_paths(prefix: Path) -> list[Path]:
    """``PREFIX.*.Dockerfile``, plus ``PREFIX.Dockerfile`` and ``PREFIX`` itself when they are files."""
    found: set[Path] = set()
    folder = prefix.parent
    if folder.is_dir():
        stem = prefix.name
        for p in folder.iterdir():
            if p.name.startswith(stem + ".") and p.name.endswith(".Dockerfile") and p.is_file():
                found.add(p)  # PREFIX.<anything>.Dockerfile, and PREFIX.Dockerfile itself
    if prefix.is_file():
        found.add(prefix)
    return sorted(found)


def load_candidates(prefix: Path) -> list[Candidate]:
    out = []
    for p in candidate_paths(prefix):
        try:
            text = read_head(p)
        except OSError as exc:
            raise DockerfileError(f"{p}: cannot read: {exc.strerror or exc}") from None
        out.append(Candidate(p, parse_header(text, p)))
    return out


def read_head(path: Path, lines: int = HEADER_LINES) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return "".join(fh.readline() for _ in range(lines))


def run_context(context: Mapping[str, Any], gpu_vendor: str) -> dict[str, Any]:
    """The values headers are compared with: the additional context, with ``gpu_vendor``
    taken from the run (detected or --mad-gpus) when the context does not name one."""
    ctx = dict(context)
    if not ctx.get("gpu_vendor"):
        ctx["gpu_vendor"] = gpu_vendor
    return ctx


def _same(a: Any, b: Any) -> bool:
    return str(a).strip().casefold() == str(b).strip().casefold()


def matches(header: Mapping[str, Any] | None, ctx: Mapping[str, Any]) -> bool:
    if not header:
        return True
    return all(key not in ctx or _same(value, ctx[key]) for key, value in header.items())


@dataclass(frozen=True)
class Matching:
    """The Dockerfiles of a prefix that a run builds, and the headerless ones passed over."""

    found: tuple[Candidate, ...]
    chosen: tuple[Candidate, ...]
    passed_over: tuple[Candidate, ...]  # without a `# CONTEXT` header, beside other candidates


def matching(prefix: Path, context: Mapping[str, Any], gpu_vendor: str) -> Matching:
    """Every Dockerfile of ``prefix`` that matches the run context (madengine builds and runs
    each). A file without a header is used only when it is the prefix's sole candidate; among
    several it is passed over, since nothing says which context it is for (madengine skips it
    then too, with a warning it swallows)."""
    ctx = run_context(context, gpu_vendor)
    found = tuple(load_candidates(prefix))
    if len(found) == 1:
        only = found[0]
        return Matching(found, (only,) if matches(only.header, ctx) else (), ())
    passed_over = tuple(c for c in found if c.header is None)
    chosen = tuple(c for c in found if c.header is not None and matches(c.header, ctx))
    return Matching(found, chosen, passed_over)


def variant_label(prefix: Path, dockerfile: Path) -> str:
    """How an item names one of several matching Dockerfiles: the part between the prefix and
    ``.Dockerfile`` (``docker/x.ctx2a.ubuntu.amd.Dockerfile`` -> ``ctx2a.ubuntu.amd``)."""
    name = dockerfile.name
    stem = name[: -len(".Dockerfile")] if name.endswith(".Dockerfile") else name
    head = prefix.name + "."
    return stem[len(head):] if stem.startswith(head) and len(stem) > len(head) else stem


def dockerfile_stem(dockerfile: Path) -> str:
    """madengine's name part for a Dockerfile: its file name without ``.Dockerfile``."""
    name = dockerfile.name
    return name[: -len(".Dockerfile")] if name.endswith(".Dockerfile") else name


def select(prefix: Path, context: Mapping[str, Any], gpu_vendor: str, *, model: str = "") -> Candidate:
    """The one Dockerfile of ``prefix`` that matches the run context, or DockerfileError.
    (Items pin their Dockerfile when several match; this serves runs that do not.)"""
    ctx = run_context(context, gpu_vendor)
    who = f"model '{model}': " if model else ""
    found_m = matching(prefix, context, gpu_vendor)
    found = list(found_m.found)
    if not found:
        raise DockerfileError(
            f"{who}no Dockerfile for prefix {prefix} (looked for {prefix}.*.Dockerfile, "
            f"{prefix}.Dockerfile and {prefix})"
        )
    chosen = list(found_m.chosen)
    if len(chosen) == 1:
        return chosen[0]
    keys = sorted({k for c in found for k in (c.header or {})})
    used = ", ".join(f"{k}={ctx[k]!r}" for k in keys if k in ctx) or "(no header key is in the context)"
    listing = "; ".join(c.describe() for c in found)
    if not chosen:
        raise DockerfileError(
            f"{who}no Dockerfile matches the run context ({used}); candidates: {listing}. "
            "Set the differing keys with --mad-context, e.g. \"{'gpu_vendor': 'AMD', 'guest_os': 'UBUNTU'}\""
        )
    raise DockerfileError(
        f"{who}{len(chosen)} Dockerfiles match the run context ({used}): "
        f"{'; '.join(c.describe() for c in chosen)}. Add a '# CONTEXT' key that tells them apart "
        "or set it in --mad-context"
    )


def arg_defaults(text: str) -> dict[str, str]:
    """``ARG NAME=default`` values of a Dockerfile (quotes removed); first definition wins."""
    out: dict[str, str] = {}
    for line in _logical_lines(text):
        m = _ARG.match(line)
        if m and m.group("value") is not None and m.group("name") not in out:
            out[m.group("name")] = _unquote(m.group("value").strip())
    return out


def base_image(text: str, build_args: Mapping[str, Any]) -> str:
    """madengine's BASE_DOCKER: the build arg, else the ``ARG BASE_DOCKER=`` default, else the
    first ``FROM`` image when it is a literal name; "" when none can be told."""
    if build_args.get("BASE_DOCKER"):
        return str(build_args["BASE_DOCKER"])
    defaults = arg_defaults(text)
    if defaults.get("BASE_DOCKER"):
        return defaults["BASE_DOCKER"]
    for line in _logical_lines(text):
        m = _FROM.match(line)
        if m:
            image = m.group("image")
            return "" if "$" in image else image
    return ""


def _logical_lines(text: str) -> list[str]:
    """Dockerfile lines with ``\\`` continuations joined and comments dropped."""
    out, pending = [], ""
    for raw in text.splitlines():
        if not pending and raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        out.append(pending + raw)
        pending = ""
    if pending:
        out.append(pending)
    return out


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


_NAME_BAD = re.compile(r"[^a-z0-9._-]+")
_SEP_RUN = re.compile(r"[._-]{2,}")


def image_name(model: str, dockerfile: Path) -> str:
    """madengine's ``ci-<model>_<dockerfile stem>``, made a valid Docker repository name:
    lowercase, ``/`` and other characters outside ``[a-z0-9._-]`` become ``_``, and separator
    runs Docker refuses (``._``, ``_-``...) collapse to one ``_``."""
    stem = dockerfile.name[: -len(".Dockerfile")] if dockerfile.name.endswith(".Dockerfile") else dockerfile.name
    raw = f"ci-{model.replace('/', '_')}_{stem}".lower()
    name = _NAME_BAD.sub("_", raw)

    def fix(m: re.Match[str]) -> str:
        run = m.group(0)
        return run if run == "__" or set(run) == {"-"} else "_"

    name = _SEP_RUN.sub(fix, name).strip("._-")
    if len(name) > 200:  # Docker's limit is 255 for the whole reference
        import hashlib

        name = name[:180].rstrip("._-") + "_" + hashlib.sha256(raw.encode()).hexdigest()[:12]
    return name or "ci-model"
