"""Helpers for driving the plugin end to end with pytester."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest


class ModelRepo:
    """A madengine-style checkout inside pytester.path: models.json, scripts/, docker/."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[dict] = []

    def script(self, rel: str, body: str) -> Path:
        p = self.path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(body).lstrip())
        p.chmod(0o755)
        return p

    def model(self, name: str, body: str | None = None, *, script: str | None = None, **fields) -> dict:
        script = script or f"scripts/{name}/run.sh"
        if body is not None:
            self.script(script, body)
        entry = {"name": name, "dockerfile": "docker/test", "scripts": script, "n_gpus": "0",
                 "tags": ["t"], "args": "", **fields}
        self.entries.append(entry)
        self.write()
        return entry

    def write(self) -> None:
        (self.path / "models.json").write_text(json.dumps(self.entries, indent=2))


@pytest.fixture
def repo(pytester: pytest.Pytester) -> ModelRepo:
    return ModelRepo(pytester.path)


PERF_OK = """
    #!/usr/bin/env bash
    echo "running $MAD_MODEL_NAME"
    echo "performance: 123.5 samples_per_second"
"""
