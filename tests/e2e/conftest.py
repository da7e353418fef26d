"""Helpers for driving the plugin end to end with pytester."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .multinode_helpers import NetnsGroup, NetnsPair, unavailable

DOCKER_BASE = os.environ.get("MAD_TEST_BASE_IMAGE", "mad-base:bookworm")


TORCH_WHEELS = "/opt/wheels/torch-2.13.0+cpu-*.whl"
TORCH_DOCKERFILE = """\
ARG BASE
FROM ${BASE}
COPY wheels /wheels
RUN python3 -m pip install --no-cache-dir --break-system-packages --find-links /wheels torch==2.13.0 \\
    && rm -rf /wheels && python3 -c "import torch.distributed as d; assert d.is_gloo_available()"
"""


@pytest.fixture(scope="session")
def torch_image() -> Iterator[str]:
    """The CI base image with this machine's PyTorch CPU wheel (``/opt/wheels``, hard-linked into
    the build context; its other dependencies from PyPI), built once per session for every
    module that runs torch in containers; removed at the end."""
    import glob
    import tempfile
    import uuid

    try:
        import docker

        c = docker.DockerClient.from_env(timeout=600)
        c.ping()
    except Exception as exc:  # noqa: BLE001
        unavailable(f"no Docker daemon answers ({exc}); run .ci/setup-docker.sh")
    wheels = sorted(glob.glob(TORCH_WHEELS))
    if not wheels:
        unavailable(f"no PyTorch CPU wheel at {TORCH_WHEELS}")
    wheel = Path(wheels[-1])
    ctx = Path(tempfile.mkdtemp(prefix="mad-torch-image-"))
    tag = f"mad-e2e-torch:{uuid.uuid4().hex[:8]}"
    try:
        (ctx / "wheels").mkdir()
        try:
            os.link(wheel, ctx / "wheels" / wheel.name)  # no copy of 190 MB
        except OSError:
            shutil.copy2(wheel, ctx / "wheels" / wheel.name)
        (ctx / "Dockerfile").write_text(TORCH_DOCKERFILE)
        try:
            c.images.build(path=str(ctx), tag=tag, buildargs={"BASE": DOCKER_BASE}, network_mode="host", rm=True,
                           forcerm=True, labels={"org.pytest-madengine.e2e": "multinode"})
        except Exception as exc:  # noqa: BLE001
            log = "".join(str(chunk.get("stream", chunk)) for chunk in getattr(exc, "build_log", []) or [])
            pytest.fail(f"building the PyTorch test image failed: {exc}\n{log[-3000:]}", pytrace=False)
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    yield tag
    try:
        c.images.remove(tag, force=True)
    except Exception:  # noqa: BLE001
        pass
    c.close()


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A Docker SDK client for the engine .ci/setup-docker.sh starts, with its base image."""
    try:
        import docker
        from pytest_madengine.executors.docker.daemon import short_reason

        c = docker.DockerClient.from_env(timeout=60)
        c.ping()
    except Exception as exc:  # noqa: BLE001
        unavailable(f"no Docker daemon answers ({short_reason(exc)}); run .ci/setup-docker.sh")
    try:
        c.images.get(DOCKER_BASE)
    except Exception:  # noqa: BLE001
        unavailable(f"base image {DOCKER_BASE} is missing; run .ci/setup-docker.sh")
    yield c
    c.close()


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


def _need_netns() -> None:
    if shutil.which("ip") is None:
        unavailable("the ip command is missing (apt-get install iproute2)")
    if os.geteuid() != 0:
        unavailable("network namespaces need root")


@pytest.fixture
def netns_group() -> Iterator[Callable[[int], NetnsGroup]]:
    """``netns_group(n)``: n namespaces on one bridge, removed at the end of the test."""
    _need_netns()
    made: list[NetnsGroup] = []

    def make(n: int) -> NetnsGroup:
        group = NetnsGroup(n)
        made.append(group)
        try:
            group.create()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            unavailable(f"cannot create network namespaces: {exc}")
        return group

    try:
        yield make
    finally:
        for group in made:
            group.delete()


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    _need_netns()
    pair = NetnsPair()
    try:
        pair.create()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pair.delete()
        unavailable(f"cannot create network namespaces: {exc}")
    try:
        yield pair
    finally:
        pair.delete()
