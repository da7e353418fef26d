"""Which Dockerfiles a model runs with: one test item per Dockerfile matching the context."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_madengine.errors import DockerfileError
from pytest_madengine.executors.docker import dockerfiles
from pytest_madengine.models import Model


@dataclass(frozen=True)
class Variant:
    """One Dockerfile of a model's prefix that matches the run context."""

    label: str  # ``ctx2a.ubuntu.amd``: the item's ``[...]`` part when several match
    dockerfile: Path


class VariantFinder:
    """Reads each Dockerfile prefix once per collection (a zoo shares a few dozen prefixes)."""

    def __init__(self, context: Any, gpu_vendor: str) -> None:
        self.context = context
        self.gpu_vendor = gpu_vendor
        self._cache: dict[Path, tuple[list[Variant], list[str]]] = {}
        self._warned: set[Path] = set()

    def __call__(self, model: Model) -> tuple[list[Variant], list[str]]:
        """(variants, warnings). No variant when the prefix has no usable file: the item then
        fails when it runs, with the candidates and the context in its reason."""
        prefix = model.dockerfile_prefix
        if prefix not in self._cache:
            try:
                m = dockerfiles.matching(prefix, self.context, self.gpu_vendor)
            except DockerfileError:
                self._cache[prefix] = ([], [])  # a bad header: reported by the run, with the file named
            else:
                found = [Variant(dockerfiles.variant_label(prefix, c.path), c.path) for c in m.chosen]
                notes = [f"{c.path}: no '# CONTEXT' header, passed over beside the other Dockerfiles of "
                         f"prefix {model.dockerfile} (model '{model.name}' in {model.source})" for c in m.passed_over]
                self._cache[prefix] = (found, notes)
        variants, notes = self._cache[prefix]
        if prefix in self._warned:
            return variants, []
        self._warned.add(prefix)
        return variants, notes
