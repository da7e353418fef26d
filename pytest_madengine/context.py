"""madengine's additional context: parsing, merging over defaults, validation.

Contexts come from ``--mad-context`` (a Python dict literal or JSON) and
``--mad-context-file`` (JSON or YAML), in command-line order; later ones
override earlier ones. Nested dicts are merged key by key so that
``docker_env_vars`` given in two places add up instead of replacing each other.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pytest_madengine.errors import ContextError
from pytest_madengine.literals import LiteralError, parse_dict_literal

# madengine 1.x/2.x keys users have in their files, plus ours. Unknown keys only warn:
# madengine accepts anything, and a typo should be visible but not fatal.
KNOWN_KEYS = frozenset(
    {
        "gpu_vendor", "guest_os", "docker_build_arg", "docker_env_vars", "docker_mounts",
        "docker_gpus", "docker_cpus", "multi_node_args", "slurm_args", "tools", "pre_scripts",
        "post_scripts", "encapsulate_script", "timeout", "MAD_SYSTEM_GPU_ARCHITECTURE",
        "MAD_CONTAINER_IMAGE", "distributed", "slurm", "k8s", "kubernetes", "env_vars",
        "gpus_per_node", "gpu_count", "n_gpus", "launcher", "vllm", "debug",
        "gen_sys_env_details", "log_error_pattern_scan", "log_error_benign_patterns",
        "log_error_patterns", "deploy", "docker_shm_size", "metric_direction",
        "rendezvous_timeout", "docker_run_options", "docker_build_timeout", "rendezvous_port", "model_args",
        "data", "ctx_test",
    }
)

# Keys madengine reads that we accept but do not act on: warn, so nobody believes they took effect.
IGNORED_KEYS = frozenset(
    {
        "k8s", "kubernetes", "env_vars", "gpus_per_node", "gpu_count", "n_gpus", "launcher", "vllm", "debug",
        "deploy", "docker_shm_size", "docker_run_options",
    }
)

DICT_KEYS = ("docker_build_arg", "docker_env_vars", "docker_mounts", "multi_node_args",
             "slurm_args", "distributed", "slurm", "env_vars", "metric_direction")
STR_DICT_KEYS = ("docker_build_arg", "docker_env_vars", "docker_mounts")
GPU_VENDORS = ("AMD", "NVIDIA", "NONE")


def defaults() -> dict[str, Any]:
    """madengine's defaults. ``gpu_vendor`` is absent: it is detected unless given."""
    return {
        "guest_os": "UBUNTU",
        "docker_build_arg": {},
        "docker_env_vars": {},
        "docker_mounts": {},
    }


@dataclass(frozen=True)
class Context(Mapping[str, Any]):
    """The merged additional context, read-only, with the sources it came from."""

    data: Mapping[str, Any] = field(default_factory=dict)
    sources: tuple[str, ...] = ()

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def dict_of(self, key: str) -> dict[str, Any]:
        value = self.data.get(key) or {}
        return dict(value)

    @property
    def gpu_vendor(self) -> str | None:
        value = self.data.get("gpu_vendor")
        return str(value).upper() if value else None


def parse_text(text: str, origin: str = "--mad-context") -> dict[str, Any]:
    """Parse a dict given as JSON or a Python literal; never evaluates code."""
    stripped = text.strip()
    if not stripped:
        raise ContextError(f"{origin}: empty context; give a dict such as \"{{'gpu_vendor': 'AMD'}}\"")
    try:
        return parse_dict_literal(stripped)
    except LiteralError as exc:
        raise ContextError(f"{origin}: {exc}") from None


def load_file(path: str | Path) -> dict[str, Any]:
    """A context file: JSON, or YAML for .yaml/.yml (and as a fallback for other names)."""
    p = Path(path)
    origin = f"--mad-context-file {p}"
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ContextError(f"{origin}: cannot read: {exc.strerror or exc}") from None
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ContextError(f"{origin}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(value, dict):
            raise ContextError(f"{origin}: must hold a mapping, got {type(value).__name__}")
        if _expanded_size(value, MAX_VALUES) > MAX_VALUES:
            # YAML aliases share one object; anything that walks the context would expand them
            raise ContextError(f"{origin}: expands to more than {MAX_VALUES:,} values through YAML aliases "
                               "(a billion-laughs document?)")
        return value
    return parse_text(text, origin)


MAX_VALUES = 100_000  # a context is a few dozen keys; far more is an alias bomb, not configuration


def _expanded_size(value: Any, limit: int) -> int:
    """How many values ``value`` holds once aliases are expanded; stops counting past ``limit``."""
    count, stack = 0, [value]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def validate(data: Mapping[str, Any]) -> list[str]:
    """Raise ContextError for values we cannot use; return warnings for unknown keys."""
    for key in DICT_KEYS:
        if key in data and not isinstance(data[key], Mapping):
            raise ContextError(f"context key '{key}' must be a dict, got {type(data[key]).__name__}")
    for key in STR_DICT_KEYS:
        for sub, value in data.get(key, {}).items():
            if isinstance(value, (dict, list, tuple, set)) or value is None:
                raise ContextError(
                    f"context key '{key}': value of '{sub}' must be a string or number, "
                    f"got {type(value).__name__}"
                )
    vendor = data.get("gpu_vendor")
    if vendor is not None and str(vendor).upper() not in GPU_VENDORS:
        raise ContextError(
            f"context key 'gpu_vendor' must be one of AMD, NVIDIA, none; got {vendor!r}"
        )
    if "timeout" in data:
        try:
            if int(data["timeout"]) < -1:
                raise ValueError
        except (TypeError, ValueError):
            raise ContextError(
                f"context key 'timeout' must be an integer >= -1, got {data['timeout']!r}"
            ) from None
    warnings = []
    for key in data:
        if key == "env_vars" and "slurm" in data:
            continue  # exported on the nodes of a `slurm` deployment
        if key in IGNORED_KEYS:
            warnings.append(f"context key '{key}' is accepted for madengine compatibility but has no effect here")
        elif key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            warnings.append(f"unknown context key '{key}'{hint} (it still selects Dockerfiles whose "
                            "'# CONTEXT' header names it)")
    return warnings


def build(sources: Sequence[tuple[str, str]]) -> tuple[Context, list[str]]:
    """Merge ``("text", value)`` / ``("file", path)`` sources, in order, over the defaults."""
    data: dict[str, Any] = defaults()
    names = []
    for kind, value in sources:
        parsed = load_file(value) if kind == "file" else parse_text(value)
        data = merge(data, parsed)
        names.append(f"{kind}:{value}" if kind == "file" else "--mad-context")
    warnings = validate(data)
    return Context(data=data, sources=tuple(names)), warnings


CTX_TEST_FILE = "ctx_test"


def with_detected(ctx: Context, root: Path) -> Context:
    """madengine's detected context keys a user did not give. ``ctx_test``: the first line of
    a ``ctx_test`` file in the checkout root, else ``"None"``, as madengine detects it (its
    fixture picks ``dummy_ctxtest``'s Dockerfile by a ``'ctx_test'`` header key; without the key,
    every such Dockerfile would match)."""
    if "ctx_test" in ctx:
        return ctx
    try:
        lines = (root / CTX_TEST_FILE).read_text(encoding="utf-8", errors="replace").splitlines()
        value = lines[0].strip() if lines else ""
    except OSError:
        value = "None"
    return Context(data={**ctx.data, "ctx_test": value}, sources=ctx.sources)
