"""Canary scan (issue #15, point 4): a run that uses the credential paths with canary values,
then a scan of everything we wrote or started finds none of them.

Each credential path is one entry of ``SOURCES``: how the canary reaches the run (the host
environment, the additional context, models.json, credential.json). The scan covers the
terminal output, every file the run wrote under the checkout (logs, build logs, JUnit,
perf.csv, run folders, summaries), the image's history and config and the container's
inspect taken while it ran. Registry login uses the htpasswd registry's real password (a
canary cannot log in), so that password is scanned for as well.

HOOK for paths that other work adds (data-provider credentials, build secrets): append a
``Source`` to ``SOURCES`` (and, if it needs files, write them in ``Source.setup``); every
test here then scans for its canary too.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.multinode_helpers import unavailable

from .faultkit import Project, check

BASE = os.environ.get("MAD_TEST_BASE_IMAGE", "mad-base:bookworm")
AUTH_REGISTRY = os.environ.get("MAD_TEST_AUTH_REGISTRY", "127.0.0.1:5001")
REG_USER = os.environ.get("MAD_TEST_REGISTRY_USER", "maduser")
REG_PASSWORD = os.environ.get("MAD_TEST_REGISTRY_PASSWORD", "madpass-s3cret")


@dataclass
class Run:
    """What the sources put together: host environment, context, model fields, files."""

    env: dict[str, str] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    env_vars: dict[str, str] = field(default_factory=dict)  # models.json env_vars
    credentials: dict[str, Any] = field(default_factory=dict)  # credential.json
    seen_in_model: list[str] = field(default_factory=list)  # variables the model proves it got


@dataclass(frozen=True)
class Source:
    name: str
    setup: Callable[[Run, str], None]  # puts the canary where this credential path reads it


def _ctx_env(key: str) -> Callable[[Run, str], None]:
    def setup(run: Run, canary: str) -> None:
        run.context.setdefault("docker_env_vars", {})[key] = canary
        run.seen_in_model.append(key)
    return setup


def _model_env(key: str) -> Callable[[Run, str], None]:
    def setup(run: Run, canary: str) -> None:
        run.env_vars[key] = canary
        run.seen_in_model.append(key)
    return setup


def _mad_secrets(run: Run, canary: str) -> None:
    run.env["MAD_SECRETS_CANARY"] = canary


def _unused_credential(run: Run, canary: str) -> None:
    run.credentials["huggingface"] = {"username": "hf-user", "password": canary}


def _marked_secret_under_plain_key(run: Run, canary: str) -> None:
    # A value the user marks secret (MAD_SECRETS_*) passed under a name that does not look secret.
    run.env["MAD_SECRETS_DB_URL"] = canary
    run.context.setdefault("docker_env_vars", {})["DB_URL"] = canary
    run.seen_in_model.append("DB_URL")


SOURCES = [
    Source("docker_env_vars token", _ctx_env("HF_TOKEN")),
    Source("docker_env_vars password", _ctx_env("DB_PASSWORD")),
    Source("docker_env_vars key", _ctx_env("OPENAI_API_KEY")),
    Source("models.json env_vars secret", _model_env("MY_SECRET")),
    Source("MAD_SECRETS environment", _mad_secrets),
    Source("credential.json entry", _unused_credential),
    Source("MAD_SECRETS value under a plain key", _marked_secret_under_plain_key),
]

MODEL = """
    #!/usr/bin/env bash
    # proves each variable arrived without printing it: its sha256
    for v in $SEEN; do printf '%s=' "$v"; printf '%s' "${!v}" | sha256sum | cut -c1-16; done
    touch started
    sleep 3
    echo "performance: 1 samples_per_second"
"""


def sha16(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def assemble(project: Project) -> tuple[Run, dict[str, str]]:
    run, canaries = Run(), {}
    for i, source in enumerate(SOURCES):
        canary = f"cnry{i}x{project.token}"
        canaries[source.name] = canary
        source.setup(run, canary)
    return run, canaries


def scan(texts: dict[str, str], canaries: dict[str, str]) -> list[str]:
    return [f"{name} canary in {where}" for where, text in texts.items() for name, c in canaries.items() if c in text]


def written_files(root: Path, skip: set[str]) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text(errors="replace") for p in root.rglob("*")
            if p.is_file() and p.name not in skip}


@pytest.fixture
def docker_client() -> Iterator[Any]:
    try:
        import docker

        c = docker.DockerClient.from_env(timeout=60)
        c.ping()
        c.images.get(BASE)
    except Exception as exc:  # noqa: BLE001
        unavailable(f"no Docker daemon with {BASE} ({exc}); run .ci/setup-docker.sh")
    yield c
    c.close()


@pytest.fixture
def private_base(docker_client: Any, tmp_path: Path) -> Iterator[str]:
    """The base image in the auth registry only, so the run must log in to pull it."""
    token = tmp_path.name[-8:].replace("_", "").lower() or "x"
    ref = f"{AUTH_REGISTRY}/mad-secrets-{token}:base"
    repo, tag = ref.rsplit(":", 1)
    try:
        docker_client.images.get(BASE).tag(repo, tag)
        out = docker_client.images.push(repo, tag=tag, auth_config={"username": REG_USER, "password": REG_PASSWORD})
        docker_client.images.remove(ref)
    except Exception as exc:  # noqa: BLE001
        unavailable(f"cannot push to the auth registry {AUTH_REGISTRY}: {exc}")
    if '"error"' in out:
        unavailable(f"cannot push to the auth registry {AUTH_REGISTRY}: {out[-300:]}")
    yield ref
    try:
        docker_client.images.remove(ref, force=True)
    except Exception:  # noqa: BLE001
        pass


def test_docker_run_leaks_no_canary(tmp_path: Path, docker_client: Any, private_base: str) -> None:
    from pytest_madengine.executors.docker import plan as dplan

    project = Project(tmp_path / "checkout")
    project.path.mkdir()
    run, canaries = assemble(project)
    canaries["registry password"] = REG_PASSWORD
    run.credentials[AUTH_REGISTRY] = {"username": REG_USER, "password": REG_PASSWORD}
    (project.path / "credential.json").write_text(json.dumps(run.credentials))
    dockerfile = project.path / "docker" / "canary.ubuntu.any.Dockerfile"
    dockerfile.parent.mkdir(parents=True)
    dockerfile.write_text(f"# CONTEXT {{'guest_os': 'UBUNTU'}}\nARG BASE_DOCKER\nFROM ${{BASE_DOCKER}}\n"
                          f"ENV MAD_E2E_TOKEN={project.token}\n")
    m = project.model("canary", MODEL, dockerfile="docker/canary",
                      env_vars={**run.env_vars, "SEEN": " ".join(run.seen_in_model)})
    context = {**run.context, "docker_build_arg": {"BASE_DOCKER": private_base}}
    (project.path / "ctx.json").write_text(json.dumps(context))
    seen: dict[str, str] = {}

    def inspect_while_running() -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not seen:
            for c in docker_client.containers.list(filters={"label": f"{dplan.LABEL_MODEL}={m}"}):
                seen["container inspect"] = json.dumps(c.attrs)
            time.sleep(0.2)

    watcher = threading.Thread(target=inspect_while_running, daemon=True)
    watcher.start()
    try:
        project.start("--mad-executor=docker", "--mad-context-file=ctx.json", "--mad-live-output", "-v", "-rA",
                      env=project.env(**run.env))
        rc, out = project.finish(timeout=300)
        watcher.join(10)
        assert rc == 0, out
        check(project, [m])
        log = (project.path / "mad_logs" / f"{m}.log").read_text()
        for key in run.seen_in_model:  # each canary reached the model
            assert f"{key}={sha16(dict(run.context['docker_env_vars'], **run.env_vars)[key])}" in log, key
        assert "container inspect" in seen, "never saw the container running"
        image = docker_client.images.get(f"ci-{m}_canary.ubuntu.any".lower())
        texts = {**written_files(project.path, {"credential.json", "ctx.json", "models.json"}),
                 "image inspect": json.dumps(image.attrs), "image history": json.dumps(image.history())}
        found = scan(texts, canaries)
        assert found == [], found
        # Known gap: docker_env_vars / env_vars reach the container as its environment (as with
        # madengine's `docker run -e`), which `docker inspect` shows while it runs. Fixing it
        # needs the values passed outside the container's config (a file or stdin): not done.
        inspect_leaks = scan(seen, {k: v for k, v in canaries.items() if k != "credential.json entry"})
        assert inspect_leaks, "container inspect is clean now: drop this xfail"
        pytest.xfail(f"container inspect shows environment values: {len(inspect_leaks)} canaries")
    finally:
        project.stop()
        for img in docker_client.images.list():
            if any(project.token in t for t in img.tags):
                docker_client.images.remove(img.id, force=True)


def _run_and_scan(project: Project, executor_args: list[str], timeout: float = 180) -> tuple[str, list[str]]:
    """A run with every source's canary, then the scan of what it wrote; (model, findings)."""
    run, canaries = assemble(project)
    (project.path / "credential.json").write_text(json.dumps(run.credentials))
    m = project.model("canary", MODEL, env_vars={**run.env_vars, "SEEN": " ".join(run.seen_in_model)})
    (project.path / "ctx.json").write_text(json.dumps(run.context))
    project.start(*executor_args, "--mad-context-file=ctx.json", "--mad-live-output", "-v", "-rA",
                  env=project.env(**run.env))
    rc, out = project.finish(timeout=timeout)
    assert rc == 0, out
    check(project, [m])
    log = (project.path / "mad_logs" / f"{m}.log").read_text()
    values = {**run.context.get("docker_env_vars", {}), **run.env_vars}
    for key in run.seen_in_model:
        assert f"{key}={sha16(values[key])}" in log, key
    return m, scan(written_files(project.path, {"credential.json", "ctx.json", "models.json"}), canaries)


def test_local_run_leaks_no_canary(tmp_path: Path) -> None:
    project = Project(tmp_path)
    _, found = _run_and_scan(project, ["--mad-executor=local"])
    assert found == [], found


def test_slurm_run_leaks_no_canary(tmp_path: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("sbatch") is None or subprocess.run(["scontrol", "ping"], capture_output=True).returncode:
        unavailable("the SLURM cluster does not answer; run .ci/setup-slurm.sh")
    project = Project(tmp_path)
    partition = os.environ.get("MAD_TEST_SLURM_PARTITION", "debug")
    _, found = _run_and_scan(project, ["--mad-context=" + json.dumps({"slurm_args": {"PARTITION": partition,
                                                                                     "TIME": "2"}})])
    # The per-node task script exports the model's environment with its values (0700) while the
    # job runs; once it is over the copy kept beside the log is masked.
    assert found == [], found
