"""Canary scan (issue #15, point 4): a run that uses every credential path with canary values,
then a scan of everything we wrote or started finds none of them.

Each credential path that every executor shares is one entry of ``SOURCES``: how the canary
reaches the run (the host environment, the additional context, models.json, credential.json).
The Docker test adds the paths only Docker has, all in one run: the registry login (the
htpasswd registry's real password, for the base image's pull and the built image's push),
build secrets (``MAD_SECRETS_*`` and the card's ``cred`` entry, fetched by the build), and the
data providers' logins (a NAS password over a real sshd, S3 keys for moto's server, both in
credential.json). The scan covers the terminal output, every file the run wrote under the
checkout (logs, build logs, JUnit, perf.csv, run folders, summaries, the build manifest), the
image's history and config, the container's inspect taken while it ran, every process's argv,
and for SLURM the job folder while the job runs, ``scontrol show job``, the batch script and
environment slurmctld keeps, and the accounting's comment fields.

To add a credential path: append a ``Source`` to ``SOURCES`` (and, if it needs files, write
them in ``Source.setup``); every test here then scans for its canary too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_madengine.executors import secretenv
from tests.e2e.data_servers import S3, Nas, nas, s3
from tests.e2e.multinode_helpers import unavailable

from .faultkit import Project, check

__all__ = ["nas", "s3"]  # fixtures of data_servers, used by this module's tests

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
    built_in: dict[str, str] = field(default_factory=dict)  # build secrets the Docker build proves it got


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
    run.env["MAD_SECRETS_CANARY"] = canary  # a build secret: the Docker build fetches it
    run.built_in["MAD_SECRETS_CANARY"] = canary


def _card_credential(run: Run, canary: str) -> None:
    # The card's `cred` entry of credential.json: a build secret (HFCRED_PASSWORD) in Docker.
    run.credentials["HFCRED"] = {"username": "hf-user", "password": canary}
    run.built_in["HFCRED_PASSWORD"] = canary


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
    Source("credential.json cred entry", _card_credential),
    Source("MAD_SECRETS value under a plain key", _marked_secret_under_plain_key),
]

MODEL = """
    #!/usr/bin/env bash
    # proves each variable arrived without printing it: its sha256
    for v in $SEEN; do printf '%s=' "$v"; printf '%s' "${!v}" | sha256sum | cut -c1-16; done
    for f in /build-secrets/*; do [ -f "$f" ] && echo "built ${f##*/}=$(cat "$f")"; done
    echo "files: $(ls -A | tr '\n' ' ')"
    touch started
    sleep "${HOLD:-3}"
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


INPUTS = {"credential.json", "ctx.json", "models.json", "data.json"}  # what the user wrote


def processes() -> str:
    """Every process's argv on this host (what `ps` shows any user)."""
    return subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False).stdout


def covered(texts: dict[str, str], wanted: list[str]) -> None:
    """The scan saw each of ``wanted`` (a place that was not there would be scanned as clean)."""
    missing = [w for w in wanted if not texts.get(w)]
    assert not missing, f"not scanned: {missing} (scanned: {sorted(texts)})"
    print(f"scanned {len(texts)} places, {sum(len(t) for t in texts.values())} characters")


def proven(log: str, run: Run, values: dict[str, str]) -> None:
    """Each canary reached the model (its hash in the log), and the secret file was gone."""
    for key in run.seen_in_model:
        assert f"{key}={sha16(values[key])}" in log, key
    listing = [line for line in log.splitlines() if "files: " in line]
    assert listing and not any(secretenv.ENV_FILE in line for line in listing), listing


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


BUILD_FETCH = ("python3 -c \"import sys,urllib.request as u;"
               "print(u.urlopen(sys.argv[1]).read().decode(),end='')\" ")


def test_docker_run_leaks_no_canary(tmp_path: Path, docker_client: Any, private_base: str, nas: Nas,
                                    s3: S3) -> None:
    """One run through every credential path at once: a registry login (the base image's pull
    and the push of the built image, credential.json), build secrets (MAD_SECRETS_*, the card's
    cred entry), data-provider logins (NAS password and S3 keys, credential.json), secret
    variables in docker_env_vars and env_vars; then a build-only pass writes the manifest."""
    from pytest_madengine.executors.docker import plan as dplan

    project = Project(tmp_path / "checkout")
    project.path.mkdir()
    run, canaries = assemble(project)
    canaries.update({"registry password": REG_PASSWORD, "NAS password": nas.password,
                     "S3 secret key": s3.secret_key})
    run.credentials[AUTH_REGISTRY] = {"username": REG_USER, "password": REG_PASSWORD}
    run.credentials["NAS_NODES"] = json.loads(nas.nodes_env())
    run.credentials["MAD_AWS_S3"] = {"USERNAME": s3.access_key, "PASSWORD": s3.secret_key,
                                     "AWS_ENDPOINT_URL_S3": s3.endpoint}
    (project.path / "credential.json").write_text(json.dumps(run.credentials))
    (nas.root / "words.txt").write_text("a\nb\n")
    (nas.root / "words.txt").chmod(0o644)
    (project.path / "data.json").write_text(json.dumps({
        "canary_nas": {"nas": {"path": str(nas.root)}},
        "canary_s3": {"aws": {"path": f"s3://{s3.bucket}/words"}}}))
    dockerfile = project.path / "docker" / "canary.ubuntu.any.Dockerfile"
    dockerfile.parent.mkdir(parents=True)
    fetch = " && ".join(f'{BUILD_FETCH}"$MAD_SECRETS_URL/{name}" | sha256sum | cut -c1-16 > /build-secrets/{name}'
                        for name in run.built_in)
    dockerfile.write_text(f"# CONTEXT {{'guest_os': 'UBUNTU'}}\nARG BASE_DOCKER\nFROM ${{BASE_DOCKER}}\n"
                          f"ENV MAD_E2E_TOKEN={project.token}\nARG MAD_SECRETS_URL\n"
                          f"RUN mkdir /build-secrets && {fetch}\n")
    m = project.model("canary", MODEL, dockerfile="docker/canary", cred="HFCRED", data="canary_nas,canary_s3",
                      env_vars={**run.env_vars, "SEEN": " ".join(run.seen_in_model)})
    repo = f"{AUTH_REGISTRY}/mad-secrets-{project.token}"
    prove = 'printf "%s HF_TOKEN=%s\\n" "$1" "$(printf %s "$HF_TOKEN" | sha256sum | cut -c1-16)"\n'
    (project.path / "around").mkdir()
    (project.path / "around" / "prove.sh").write_text(prove)
    context = {**run.context, "docker_build_arg": {"BASE_DOCKER": private_base},
               "pre_scripts": [{"path": "around/prove.sh", "args": "pre"}],  # they see the secrets too
               "post_scripts": [{"path": "around/prove.sh", "args": "post"}]}
    (project.path / "ctx.json").write_text(json.dumps(context))
    seen: dict[str, str] = {}

    def while_running() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and "processes" not in seen:
            for c in docker_client.containers.list(filters={"label": f"{dplan.LABEL_MODEL}={m}"}):
                seen.setdefault("container inspect", json.dumps(c.attrs))
                if any(project.path.rglob("started")):  # the loader is done, the model runs
                    seen["container inspect (model running)"] = json.dumps(c.attrs)
                    seen["run folder while running"] = "\n".join(str(p) for p in project.path.rglob("*"))
                    seen["processes"] = processes()
            time.sleep(0.2)

    watcher = threading.Thread(target=while_running, daemon=True)
    watcher.start()
    try:
        project.start("--mad-executor=docker", "--mad-context-file=ctx.json", f"--mad-registry={repo}",
                      "--mad-live-output", "-v", "-rA", env=project.env(HOLD="4", **run.env))
        rc, out = project.finish(timeout=300)
        watcher.join(10)
        assert rc == 0, out
        check(project, [m])
        assert "processes" in seen, f"never saw the model running\n{out[-2000:]}"
        assert secretenv.ENV_FILE not in seen["run folder while running"]
        log = (project.path / "mad_logs" / f"{m}.log").read_text()
        proven(log, run, {**run.context["docker_env_vars"], **run.env_vars})
        token = sha16(run.context["docker_env_vars"]["HF_TOKEN"])
        assert f"pre HF_TOKEN={token}" in log and f"post HF_TOKEN={token}" in log, log
        for name, secret in run.built_in.items():  # the build got each build secret
            assert f"built {name}={sha16(secret)}" in log, name
        assert "served by nas" in log and "served by aws" in log, log
        assert "secret environment" in log  # the plan names the keys, values masked
        # The manifest: a build-only pass over the same checkout (the image is reused).
        project.start("--mad-executor=docker", "--mad-context-file=ctx.json", f"--mad-registry={repo}",
                      "--mad-build-only", "--junitxml=build.xml", env=project.env(**run.env))
        rc, out = project.finish(timeout=180)
        assert rc == 0, out
        assert (project.path / "build_manifest.json").is_file()
        image = docker_client.images.get(f"ci-{m}_canary.ubuntu.any".lower())
        texts = {**written_files(project.path, INPUTS), **seen,
                 "image inspect": json.dumps(image.attrs),
                 "image history": json.dumps(docker_client.api.history(image.id))}
        covered(texts, ["out.txt", "j.xml", "perf.csv", "build_manifest.json", f"mad_logs/{m}.log",
                        f"mad_logs/{m}.build.log", "container inspect (model running)", "image history", "processes"])
        found = scan(texts, canaries)
        assert found == [], found
        assert not list(project.path.rglob(secretenv.ENV_FILE)), "a secret environment file was left"
    finally:
        project.stop()
        for img in docker_client.images.list():
            if any(project.token in t for t in img.tags):
                docker_client.images.remove(img.id, force=True)


def _run_and_scan(project: Project, executor_args: list[str], timeout: float = 180,
                  while_running: Callable[[str], dict[str, str]] | None = None) -> tuple[str, list[str]]:
    """A run with every source's canary, then the scan of what it wrote and of what
    ``while_running(model)`` saw while the model ran; (model, findings)."""
    run, canaries = assemble(project)
    (project.path / "credential.json").write_text(json.dumps(run.credentials))
    m = project.model("canary", MODEL, env_vars={**run.env_vars, "SEEN": " ".join(run.seen_in_model)})
    (project.path / "ctx.json").write_text(json.dumps(run.context))
    seen: dict[str, str] = {}
    watcher = None
    if while_running is not None:
        watch = while_running

        def look() -> None:
            seen.update(watch(m))

        watcher = threading.Thread(target=look, daemon=True)
        watcher.start()
    project.start(*executor_args, "--mad-context-file=ctx.json", "--mad-live-output", "-v", "-rA",
                  env=project.env(**run.env))
    rc, out = project.finish(timeout=timeout)
    if watcher is not None:
        watcher.join(10)
        assert seen, f"never saw the model running\n{out[-2000:]}"
    assert rc == 0, out
    check(project, [m])
    log = (project.path / "mad_logs" / f"{m}.log").read_text()
    proven(log, run, {**run.context.get("docker_env_vars", {}), **run.env_vars})
    texts = {**written_files(project.path, INPUTS), **seen}
    covered(texts, ["out.txt", "j.xml", "perf.csv", f"mad_logs/{m}.log",
                    *(k for k in seen if not k.startswith("job folder while running: "))])  # outputs may be empty
    return m, scan(texts, canaries)


def test_local_run_leaks_no_canary(tmp_path: Path) -> None:
    project = Project(tmp_path)
    _, found = _run_and_scan(project, ["--mad-executor=local"])
    assert found == [], found


def _slurm_watch(project: Project) -> Callable[[str], dict[str, str]]:
    """While the job's model runs: its scripts and every file of its job folder, what
    slurmctld shows of the job (scontrol, its stored batch script and environment), the
    accounting's comment fields, and every process's argv."""

    def watch(model: str) -> dict[str, str]:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            if list((project.path / "mad_work").glob(f"{model}.slurm/node*/started")):
                break
            time.sleep(0.2)
        else:
            return {}
        out: dict[str, str] = {"processes": processes()}
        job_dir = project.path / "mad_logs" / f"{model}.slurm"
        out.update({f"job folder while running: {p.name}": p.read_text(errors="replace")
                    for p in job_dir.iterdir() if p.is_file()})
        out["job folder listing while running"] = "\n".join(p.name for p in job_dir.iterdir())
        names = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True).stdout
        ids = [line.split()[0] for line in names.splitlines() if model.replace("/", "_") in line]
        assert ids, names
        assert "job folder while running: task.sh" in out or "job folder while running: job.sbatch" in out
        for job in ids:
            for argv in (["scontrol", "show", "job", "-dd", job], ["scontrol", "write", "batch_script", job, "-"],
                         ["sacct", "-n", "-j", job, "-o", "JobName%100,Comment%300,AdminComment%300,SystemComment%300"]):
                out[" ".join(argv)] = subprocess.run(argv, capture_output=True, text=True).stdout
            for env_file in Path("/var/lib/slurm/slurmctld").glob(f"hash.*/job.{job}/environment"):
                out[f"slurmctld {env_file}"] = env_file.read_bytes().decode(errors="replace")
        return out

    return watch


@pytest.mark.parametrize("key", ["slurm_args", "slurm"])
def test_slurm_run_leaks_no_canary(tmp_path: Path, key: str) -> None:
    if shutil.which("sbatch") is None or subprocess.run(["scontrol", "ping"], capture_output=True).returncode:
        unavailable("the SLURM cluster does not answer; run .ci/setup-slurm.sh")
    project = Project(tmp_path)
    partition = os.environ.get("MAD_TEST_SLURM_PARTITION", "debug")
    # Two nodes: each sources (and deletes) its own file.
    ctx = ({"slurm_args": {"PARTITION": partition, "TIME": "2", "NODES": 2}} if key == "slurm_args"
           else {"slurm": {"partition": partition, "time": "2", "exclusive": False, "nodes": 2}})
    m, found = _run_and_scan(project, ["--mad-context=" + json.dumps(ctx)], while_running=_slurm_watch(project))
    assert found == [], found
    # The secret variables were never in the scripts: each node's 0600 file was read and deleted.
    log = (project.path / "mad_logs" / f"{m}.log").read_text()
    assert "secret environment" in log
    hf = next(line.split("=", 1)[1] for line in log.splitlines() if "] HF_TOKEN=" in line)
    assert log.count(f"HF_TOKEN={hf}") == 2, log  # both nodes got it
    assert not list((project.path / "mad_logs").rglob(".secret-env.node*")), "a secret environment file was left"
