"""The docker executor end to end, against the real Docker engine (.ci/setup-docker.sh).

Each test writes a tiny madengine project (models.json, scripts, Dockerfiles) into
``pytester.path`` and runs pytest on it with ``--mad-executor=docker``. Images and models are
named with a per-test token, so tests neither share images nor see each other's containers;
every image a test makes is removed afterwards.

Without a Docker daemon these tests skip, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_madengine.executors.docker import daemon as ddaemon
from pytest_madengine.executors.docker import plan as dplan
from tests.procs import dead_pid

from .multinode_helpers import unavailable

pytestmark = pytest.mark.docker

BASE = os.environ.get("MAD_TEST_BASE_IMAGE", "mad-base:bookworm")
AUTH_REGISTRY = os.environ.get("MAD_TEST_AUTH_REGISTRY", "127.0.0.1:5001")
REG_USER = os.environ.get("MAD_TEST_REGISTRY_USER", "maduser")
REG_PASSWORD = os.environ.get("MAD_TEST_REGISTRY_PASSWORD", "madpass-s3cret")




class Project:
    """A madengine project in pytester.path whose names all carry ``token``."""

    def __init__(self, pytester: pytest.Pytester, client: Any, token: str) -> None:
        self.pytester = pytester
        self.path = pytester.path
        self.client = client
        self.token = token
        self.entries: list[dict[str, Any]] = []
        self.dockerfile("docker/base", "ARG BASE_DOCKER\nFROM ${BASE_DOCKER}\n", header="{'guest_os': 'UBUNTU'}",
                        variant="ubuntu.any")

    def name(self, short: str) -> str:
        return f"{short}_{self.token}"

    def dockerfile(self, prefix: str, body: str, *, header: str | None = None, variant: str = "any") -> Path:
        path = self.path / f"{prefix}.{variant}.Dockerfile"
        path.parent.mkdir(parents=True, exist_ok=True)
        head = f"# CONTEXT {header}\n" if header else ""
        # The token makes every test's build inputs (and so its build hash) its own.
        path.write_text(f"{head}{body}ENV MAD_E2E_TOKEN={self.token}\n")
        return path

    def model(self, short: str, script: str, *, dockerfile: str = "docker/base", **fields: Any) -> str:
        name = self.name(short)
        folder = self.path / "scripts" / short
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "run.sh").write_text("#!/bin/bash\nset -u\n" + script)
        entry = {"name": name, "url": "", "dockerfile": dockerfile, "scripts": f"scripts/{short}/run.sh",
                 "n_gpus": "0", "owner": "e2e", "training_precision": "fp32", "tags": ["e2e"], "args": "",
                 "timeout": 120}
        entry.update(fields)
        self.entries.append(entry)
        (self.path / "models.json").write_text(json.dumps(self.entries, indent=1))
        return name

    def context(self, **extra: Any) -> str:
        ctx: dict[str, Any] = {"docker_build_arg": {"BASE_DOCKER": BASE}}
        ctx.update(extra)
        return "--mad-context=" + json.dumps(ctx)

    def args(self, *extra: str, tags: str = "e2e", context: str | None = None) -> list[str]:
        return [f"--mad-tags={tags}", "--mad-executor=docker", context or self.context(), "-p", "no:cacheprovider",
                *extra]

    def run(self, *extra: str, tags: str = "e2e", context: str | None = None) -> pytest.RunResult:
        return self.pytester.runpytest(*self.args(*extra, tags=tags, context=context))

    def run_subprocess(self, *extra: str, tags: str = "e2e", context: str | None = None,
                       timeout: float = 300) -> pytest.RunResult:
        return self.pytester.runpytest_subprocess(*self.args(*extra, tags=tags, context=context), timeout=timeout)

    def perf(self) -> list[dict[str, str]]:
        with open(self.path / "perf.csv", newline="") as fh:
            return list(csv.DictReader(fh))

    def log(self, model: str, build: bool = False) -> str:
        return (self.path / "mad_logs" / f"{model}{'.build' if build else ''}.log").read_text()

    def image_id(self, model: str, stem: str = "base.ubuntu.any") -> str:
        return self.client.images.get(f"ci-{model}_{stem}".lower()).id

    def containers(self, model: str) -> list[Any]:
        return self.client.containers.list(all=True, filters={"label": f"{dplan.LABEL_MODEL}={model}"})

    def cleanup(self) -> None:
        for c in self.client.containers.list(all=True, filters={"label": dplan.LABEL_MODEL}, ignore_removed=True):
            if self.token in c.labels.get(dplan.LABEL_MODEL, ""):
                c.remove(force=True)
        for image in self.client.images.list(filters={"label": dplan.LABEL_HASH}):
            mine = f"MAD_E2E_TOKEN={self.token}" in (image.attrs.get("Config") or {}).get("Env", [])
            for tag in image.tags:
                if self.token in tag:
                    mine = True
                    try:
                        self.client.images.remove(tag, force=True)
                    except Exception:  # noqa: BLE001
                        pass
            if mine:
                try:
                    self.client.images.remove(image.id, force=True)
                except Exception:  # noqa: BLE001 - went with its last tag
                    pass


@pytest.fixture
def project(pytester: pytest.Pytester, client: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    # Subprocess runs import the plugin this test process imported, whatever is pip-installed.
    import pytest_madengine

    root = str(Path(pytest_madengine.__file__).resolve().parent.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    p = Project(pytester, client, uuid.uuid4().hex[:8])
    yield p
    p.cleanup()


PERF_SCRIPT = """\
echo "cwd=$(pwd)"
echo "model=$MAD_MODEL_NAME args=$*"
test -f /.dockerenv && echo "in-container=yes"
echo "workspace=$(ls /myworkspace/models.json)"
echo "performance: 42.5 samples_per_second"
"""


# ------------------------------------------------------------------ build, run, metrics


def test_build_run_and_metrics(project: Project) -> None:
    m = project.model("basic", PERF_SCRIPT, args="--batch 8")
    res = project.run("--junitxml=junit.xml")
    res.assert_outcomes(passed=1)
    log = project.log(m)
    assert f"cwd=/myworkspace/mad_work/{m}" in log  # through the workspace mount
    assert not (project.path / "run_directory").exists()  # no mount point left in the checkout
    stem = "base.ubuntu.any"
    assert (project.path / f"{m}_{stem}.run.live.log").read_text() == log  # madengine's names, linked
    assert (project.path / f"{m}_{stem}.build.live.log").resolve() == (project.path / "mad_logs" / f"{m}.build.log")
    assert project.perf()[-1]["docker_image"] == f"ci-{m}_{stem}".lower()
    assert f"model={m} args=--batch 8" in log
    assert "in-container=yes" in log
    assert "workspace=/myworkspace/models.json" in log
    build_log = project.log(m, build=True)
    assert "Step 1/" in build_log and f"built ci-{m}_base.ubuntu.any" in build_log
    [row] = project.perf()
    assert row["status"] == "SUCCESS" and row["performance"] == "42.5" and row["metric"] == "samples_per_second"
    assert row["docker_image"] == f"ci-{m}_base.ubuntu.any"
    assert row["docker_sha"] == project.image_id(m)
    assert row["deployment_type"] == "docker"
    assert float(row["build_duration"]) > 0
    junit = (project.path / "junit.xml").read_text()
    assert f"ci-{m}_base.ubuntu.any" in junit
    assert project.containers(m) == []  # removed after the run


def test_failing_script_exit_code(project: Project) -> None:
    m = project.model("fails", "echo 'performance: 1 x'\nexit 3\n")
    res = project.run()
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines([f"*{m}: exit code 3*"])
    assert project.containers(m) == []


# ------------------------------------------------------------------ image reuse


def test_image_reuse_rebuild_and_input_changes(project: Project) -> None:
    m = project.model("reuse", PERF_SCRIPT)
    project.run().assert_outcomes(passed=1)
    first = project.client.images.get(f"ci-{m}_base.ubuntu.any")
    assert "Step 1/" in project.log(m, build=True)

    # warm: no build at all, same image
    res = project.run()
    res.assert_outcomes(passed=1)
    build_log = project.log(m, build=True)
    assert "no build" in build_log and "Step " not in build_log
    again = project.client.images.get(f"ci-{m}_base.ubuntu.any")
    assert (again.id, again.attrs["Created"]) == (first.id, first.attrs["Created"])
    assert project.perf()[-1]["build_duration"] == ""

    # --mad-rebuild: a fresh image even though nothing changed
    project.run("--mad-rebuild").assert_outcomes(passed=1)
    assert "Step 1/" in project.log(m, build=True)
    rebuilt = project.client.images.get(f"ci-{m}_base.ubuntu.any")
    assert rebuilt.id != first.id

    # a changed file in the build context (./docker) changes the build hash
    (project.path / "docker" / "extra.txt").write_text("new input\n")
    project.run().assert_outcomes(passed=1)
    assert "Step 1/" in project.log(m, build=True)
    # ... and a changed build arg does too
    project.run(context=project.context(docker_build_arg={"BASE_DOCKER": BASE, "EXTRA": "1"}))
    assert "Step 1/" in project.log(m, build=True)


def test_models_sharing_a_dockerfile_build_once(project: Project) -> None:
    a = project.model("share_a", PERF_SCRIPT)
    b = project.model("share_b", PERF_SCRIPT)
    project.run().assert_outcomes(passed=2)
    assert "Step 1/" in project.log(a, build=True)
    assert "same build inputs" in project.log(b, build=True) and "Step " not in project.log(b, build=True)
    assert project.image_id(a) == project.image_id(b)


def test_parallel_workers_build_each_image_once(project: Project) -> None:
    names = [project.model(f"par{i}", PERF_SCRIPT) for i in range(3)]
    res = project.run_subprocess("-n", "3")
    res.assert_outcomes(passed=3)
    built = [n for n in names if "Step 1/" in project.log(n, build=True)]
    assert len(built) == 1, [project.log(n, build=True) for n in names]


# ------------------------------------------------------------------ Dockerfile selection


def test_dockerfile_selected_by_context(project: Project) -> None:
    project.dockerfile("docker/sel", "ARG BASE_DOCKER\nFROM ${BASE_DOCKER}\nENV WHICH=amd\n",
                       header="{'gpu_vendor': 'AMD', 'guest_os': 'UBUNTU'}", variant="ubuntu.amd")
    project.dockerfile("docker/sel", "ARG BASE_DOCKER\nFROM ${BASE_DOCKER}\nENV WHICH=nvidia\n",
                       header="{'gpu_vendor': 'NVIDIA', 'guest_os': 'UBUNTU'}", variant="ubuntu.nvidia")
    m = project.model("sel", 'echo "which=$WHICH"\necho "performance: 1 x"\n', dockerfile="docker/sel")
    project.run(context=project.context(gpu_vendor="NVIDIA")).assert_outcomes(passed=1)
    assert "which=nvidia" in project.log(m)
    assert project.perf()[-1]["docker_image"] == f"ci-{m}_sel.ubuntu.nvidia"
    project.run(context=project.context(gpu_vendor="AMD")).assert_outcomes(passed=1)
    assert "which=amd" in project.log(m)


def test_dockerfile_selection_errors_and_variants(project: Project) -> None:
    project.dockerfile("docker/two", "FROM scratch\n", header="{'gpu_vendor': 'AMD'}", variant="amd")
    project.dockerfile("docker/two", "FROM scratch\n", header="{'gpu_vendor': 'NVIDIA'}", variant="nvidia")
    body = "ARG BASE_DOCKER\nFROM ${BASE_DOCKER}\n"
    project.dockerfile("docker/dup", body + "ENV WHICH=a\n", header="{'guest_os': 'UBUNTU'}", variant="a")
    project.dockerfile("docker/dup", body + "ENV WHICH=c\n", header="{'gpu_vendor': 'NONE'}", variant="c")
    project.dockerfile("docker/dup", body + "ENV WHICH=b\n", variant="b")  # no header: passed over
    none = project.model("nomatch", "echo hi\n", dockerfile="docker/two")
    dup = project.model("ambiguous", 'echo "which=$WHICH"\necho "performance: 1 x"\n', dockerfile="docker/dup")
    missing = project.model("missing", "echo hi\n", dockerfile="docker/nothere")
    good = project.model("good", PERF_SCRIPT)
    res = project.run("-rA", context=project.context(guest_os="UBUNTU"))
    res.assert_outcomes(passed=3, failed=2)
    out = res.stdout.str()
    assert f"model '{none}': no Dockerfile matches the run context (gpu_vendor='NONE')" in out
    assert "two.amd.Dockerfile {'gpu_vendor': 'AMD'}" in out and "two.nvidia.Dockerfile" in out
    assert f"PASSED models.json::{dup}[a]" in out and f"PASSED models.json::{dup}[c]" in out
    assert "dup.b.Dockerfile: no '# CONTEXT' header, passed over" in out  # a warning, in the summary
    assert "which=a" in project.log(f"{dup}[a]") and "which=c" in project.log(f"{dup}[c]")
    assert f"model '{missing}': no Dockerfile for prefix" in out
    assert "Traceback" not in out
    rows = {(r["model"], r["docker_file"]): r["status"] for r in project.perf()}
    assert rows[(dup, "docker/dup.a.Dockerfile")] == rows[(dup, "docker/dup.c.Dockerfile")] == "SUCCESS"
    # one item of several is selected by its full name
    res = project.run(tags=f"{dup}[c]")
    res.assert_outcomes(passed=1)
    assert project.perf()[-1]["docker_file"] == "docker/dup.c.Dockerfile"
    statuses = {r["model"]: r["status"] for r in project.perf() if r["model"] != dup}
    assert statuses == {none: "FAILURE", missing: "FAILURE", good: "SUCCESS"}


# ------------------------------------------------------------------ env, mounts, cpus, GPUs


def test_env_vars_mounts_and_cpus(project: Project, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "input.txt").write_text("mounted-data\n")
    m = project.model("envmount", 'echo "my=$MY_VAR"\ncat /data/input.txt\necho "nproc=$(nproc)"\n'
                                  'echo "performance: 1 x"\n',
                      env_vars={"FROM_CARD": "card"})
    ctx = project.context(docker_env_vars={"MY_VAR": "hello world; $(rm -rf /)"}, docker_mounts={"/data": str(data)},
                          docker_cpus="0")
    project.run(context=ctx).assert_outcomes(passed=1)
    log = project.log(m)
    assert "my=hello world; $(rm -rf /)" in log  # verbatim: no shell ever sees it
    assert "mounted-data" in log
    assert "nproc=1" in log


def test_missing_mount_is_refused(project: Project) -> None:
    m = project.model("nomount", PERF_SCRIPT)
    res = project.run(context=project.context(docker_mounts={"/data": "/nonexistent/for/sure"}))
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines([f"*{m}: context docker_mounts: host path /nonexistent/for/sure (for /data) does not exist*"])


def test_gpus_none_runs_without_devices(project: Project) -> None:
    m = project.model("nogpu", 'echo "ngpus=$MAD_RUNTIME_NGPUS"\nls /dev\necho "performance: 1 x"\n', n_gpus="1")
    project.run("--mad-gpus=none").assert_outcomes(passed=1)
    log = project.log(m)
    assert "ngpus=0" in log and "kfd" not in log and "dri" not in log


# ------------------------------------------------------------------ timeouts, interrupts, faults


def test_timeout_kills_and_removes_the_container(project: Project) -> None:
    m = project.model("slow", 'echo started\nsleep 120\necho "performance: 1 x"\n')
    t0 = time.monotonic()
    res = project.run("--mad-timeout=3")
    res.assert_outcomes(failed=1)
    assert time.monotonic() - t0 < 60
    res.stdout.fnmatch_lines([f"*{m}: timed out after 3 s*"])
    assert "started" in project.log(m)
    assert project.containers(m) == []


def test_ctrl_c_stops_and_removes_the_container(project: Project) -> None:
    m = project.model("sigint", 'echo started\nsleep 120\necho "performance: 1 x"\n')
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *project.args()], cwd=project.path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(c.status == "running" for c in project.containers(m)):
            assert time.monotonic() < deadline and proc.poll() is None, "the container never started"
            time.sleep(0.2)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "interrupted after" in out, out
    assert project.containers(m) == []


def test_no_daemon_is_one_clear_line(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    m = project.model("nodaemon", PERF_SCRIPT)
    sock = f"/tmp/mad-no-daemon-{project.token}.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    t0 = time.monotonic()
    res = project.run_subprocess(timeout=60)
    assert time.monotonic() - t0 < 30
    res.assert_outcomes(failed=1)
    out = res.stdout.str() + res.stderr.str()
    res.stdout.fnmatch_lines([f"*{m}: Docker daemon at unix://{sock} is not answering: No such file or directory*"])
    assert "Traceback" not in out


class SocketProxy:
    """A unix-socket forwarder to the real daemon that can be cut, to play a daemon dying."""

    def __init__(self, path: str, target: str) -> None:
        self.path, self.target = path, target
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(64)
        self.conns: list[socket.socket] = []
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                c, _ = self.server.accept()
            except OSError:
                return
            u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            u.connect(self.target)
            self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def stop(self) -> None:
        self.stopped.set()
        self.server.close()
        for s in self.conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        os.unlink(self.path)


def test_daemon_dying_mid_run(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not real.startswith("unix://"):
        pytest.skip("needs a unix-socket daemon")
    m = project.model("daemondies", 'echo started\nsleep 120\necho "performance: 1 x"\n')
    folder = tempfile.mkdtemp(prefix="mad-", dir="/tmp")
    path = f"{folder}/d.sock"
    proxy = SocketProxy(path, real[len("unix://"):])
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")

    def cut_when_running() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any(c.status == "running" for c in project.containers(m)):
                time.sleep(0.5)
                proxy.stop()
                return
            time.sleep(0.2)

    cutter = threading.Thread(target=cut_when_running, daemon=True)
    cutter.start()
    t0 = time.monotonic()
    res = project.run_subprocess(timeout=120)
    cutter.join(5)
    assert time.monotonic() - t0 < 90
    res.assert_outcomes(failed=1)
    out = res.stdout.str() + res.stderr.str()
    res.stdout.fnmatch_lines([f"*{m}: Docker daemon at unix://{path} is not answering*"])
    assert "Traceback" not in out
    assert "started" in project.log(m)


# ------------------------------------------------------------------ failed builds


def test_failed_build_isolates_and_is_not_retried(project: Project) -> None:
    project.dockerfile("docker/broken", "ARG BASE_DOCKER\nFROM ${BASE_DOCKER}\n"
                                        "RUN echo 'compiling the thing' && echo 'fatal: kaboom' >&2 && exit 7\n")
    bad1 = project.model("broken1", PERF_SCRIPT, dockerfile="docker/broken")
    bad2 = project.model("broken2", PERF_SCRIPT, dockerfile="docker/broken")
    good = project.model("fine", PERF_SCRIPT)
    res = project.run()
    res.assert_outcomes(passed=1, failed=2)
    out = res.stdout.str()
    assert f"{bad1}: docker build of ci-{bad1}_broken.any failed" in out
    assert "fatal: kaboom" in out  # the build log's last lines are in the reason
    assert f"for model '{bad1}': not retried" in out
    assert "compiling the thing" in project.log(bad1, build=True)
    statuses = {r["model"]: r["status"] for r in project.perf()}
    assert statuses == {bad1: "FAILURE", bad2: "FAILURE", good: "SUCCESS"}


# ------------------------------------------------------------------ private registry


def _all_output_text(project: Project, res: pytest.RunResult) -> str:
    texts = [res.stdout.str(), res.stderr.str()]
    for p in project.path.rglob("*"):
        if p.is_file() and p.name != "credential.json":
            texts.append(p.read_text(errors="replace"))
    return "\n".join(texts)


@pytest.fixture
def private_base(project: Project) -> Iterator[str]:
    """The base image pushed under a fresh name to the auth registry, and absent locally."""
    client = project.client
    ref = f"{AUTH_REGISTRY}/mad-e2e-{project.token}:base"
    repo, tag = ref.rsplit(":", 1)
    try:
        client.images.get(BASE).tag(repo, tag)
        out = client.images.push(repo, tag=tag, auth_config={"username": REG_USER, "password": REG_PASSWORD})
    except Exception as exc:  # noqa: BLE001
        unavailable(f"cannot push to the auth registry {AUTH_REGISTRY}: {ddaemon.short_reason(exc)}")
    if '"error"' in out:
        unavailable(f"cannot push to the auth registry {AUTH_REGISTRY}: {out[-300:]}")
    client.images.remove(ref)
    with pytest.raises(Exception):  # noqa: B017 - really gone, so the run must pull it
        client.images.get(ref)
    yield ref
    try:
        client.images.remove(ref, force=True)
    except Exception:  # noqa: BLE001
        pass


def test_private_base_image_login_and_pull(project: Project, private_base: str) -> None:
    (project.path / "credential.json").write_text(json.dumps(
        {AUTH_REGISTRY: {"username": REG_USER, "password": REG_PASSWORD}}))
    m = project.model("private", PERF_SCRIPT)
    res = project.run("--junitxml=junit.xml", "--mad-live-output",
                      context=project.context(docker_build_arg={"BASE_DOCKER": private_base}))
    res.assert_outcomes(passed=1)
    build_log = project.log(m, build=True)
    assert f"logging in to {AUTH_REGISTRY} as {REG_USER}" in build_log and f"pulled {private_base}" in build_log
    assert project.perf()[-1]["base_docker"] in ("", private_base)  # see the report: session must copy it
    assert REG_PASSWORD not in _all_output_text(project, res)
    image = project.client.images.get(f"ci-{m}_base.ubuntu.any")
    assert REG_PASSWORD not in json.dumps(image.attrs) and REG_PASSWORD not in json.dumps(image.history())


def test_private_base_image_bad_password(project: Project, private_base: str) -> None:
    wrong = "wrong-" + REG_PASSWORD
    (project.path / "credential.json").write_text(json.dumps(
        {AUTH_REGISTRY: {"username": REG_USER, "password": wrong}}))
    m = project.model("badpass", PERF_SCRIPT)
    res = project.run(context=project.context(docker_build_arg={"BASE_DOCKER": private_base}))
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines([f"*{m}: login to {AUTH_REGISTRY} as {REG_USER} (credential.json '{AUTH_REGISTRY}') failed*"])
    text = _all_output_text(project, res)
    assert wrong not in text and REG_PASSWORD not in text


def test_private_base_image_without_credentials(project: Project, private_base: str) -> None:
    m = project.model("nocreds", PERF_SCRIPT)
    res = project.run(context=project.context(docker_build_arg={"BASE_DOCKER": private_base}))
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines([f"*{m}: cannot pull base image {private_base}*no credentials for {AUTH_REGISTRY}*"])


# ------------------------------------------------------------------ keep-alive, orphans


def test_keep_alive_keeps_the_container_and_the_exit_code(project: Project) -> None:
    ok = project.model("alive", PERF_SCRIPT)
    bad = project.model("alivebad", "echo hi\nexit 5\n")
    res = project.run("--mad-keep-alive")
    res.assert_outcomes(passed=1, failed=1)
    res.stdout.fnmatch_lines([f"*{bad}: exit code 5*"])
    for m in (ok, bad):
        [c] = project.containers(m)
        assert c.status == "running" and c.labels[dplan.LABEL_KEEP_ALIVE] == "1"
        assert f"docker exec -it {c.name} bash" in project.log(m)
        assert c.exec_run(["cat", dplan.EXIT_CODE_FILE], workdir=c.attrs["Config"]["WorkingDir"]).output.strip() in (b"0", b"5")
    # a later run's orphan sweep leaves kept containers alone
    project.run(tags=ok).assert_outcomes(passed=1)
    assert len(project.containers(bad)) == 1


def test_containers_of_a_killed_pytest_are_swept(project: Project) -> None:
    orphan = project.name("orphan")
    labels = {dplan.LABEL_MODEL: orphan, dplan.LABEL_RUN_ID: "deadbeef",
              dplan.LABEL_OWNER: f"{socket.gethostname()}:{dead_pid()}"}
    c = project.client.containers.run(BASE, ["sleep", "300"], detach=True, labels=labels, name=f"mad_{orphan}")
    other_host = project.client.containers.run(
        BASE, ["sleep", "300"], detach=True, name=f"mad_{orphan}_elsewhere",
        labels={**labels, dplan.LABEL_OWNER: f"another-host-{project.token}:1"})
    try:
        project.model("after", PERF_SCRIPT)
        res = project.run()
        res.assert_outcomes(passed=1)
        assert [x.id for x in project.containers(orphan)] == [other_host.id]
        if not os.environ.get("PYTEST_XDIST_WORKER"):  # in parallel, another test's run may sweep it first
            assert f"mad_{orphan}" in project.log(project.name("after"))  # said what it removed
    finally:
        for x in (c, other_host):
            try:
                x.remove(force=True)
            except Exception:  # noqa: BLE001
                pass
