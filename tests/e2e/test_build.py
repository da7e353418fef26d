"""Build once, run many, end to end: ``--mad-build-only`` against the real Docker engine and the
two local registries of .ci/setup-docker.sh (127.0.0.1:5000 open, 127.0.0.1:5001 htpasswd),
then runs from the manifest it wrote, on a "different host" (the images removed locally first).

Every model, image and registry repository carries a ``madbuild<hex>`` token; what a test
makes is removed afterwards (the registries' repositories stay, as their blobs are shared).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import socket
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_madengine.executors.docker import plan as dplan

from .multinode_helpers import Nodes, free_port_pair, node_context, show, unavailable
from .test_docker import BASE, Project

pytestmark = pytest.mark.docker

OPEN_REGISTRY = os.environ.get("MAD_TEST_REGISTRY", "127.0.0.1:5000")
AUTH_REGISTRY = os.environ.get("MAD_TEST_AUTH_REGISTRY", "127.0.0.1:5001")
REG_USER = os.environ.get("MAD_TEST_REGISTRY_USER", "maduser")
REG_PASSWORD = os.environ.get("MAD_TEST_REGISTRY_PASSWORD", "madpass-s3cret")

SCRIPT = 'echo "model=$MAD_MODEL_NAME"\ncat /built-by.txt\necho "performance: 7.5 samples_per_second"\n'


class BuildProject(Project):
    def built_model(self, short: str, flavour: str, **fields: Any) -> str:
        """A model with a Dockerfile of its own (a distinct image), tiny to build."""
        self.dockerfile(f"docker/{short}", f"ARG BASE_DOCKER\nFROM ${{BASE_DOCKER}}\nRUN echo {flavour} > /built-by.txt\n")
        return self.model(short, SCRIPT, dockerfile=f"docker/{short}", **fields)

    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / "build_manifest.json").read_text())
        return data

    def cleanup(self) -> None:
        super().cleanup()
        for image in self.client.images.list():
            for tag in image.tags:
                if self.token in tag:
                    try:
                        self.client.images.remove(tag, force=True)
                    except Exception:  # noqa: BLE001
                        pass

    def remove_local(self) -> None:
        """The run host is another machine: none of the built images is here."""
        for image in self.client.images.list(filters={"label": dplan.LABEL_HASH}):
            if any(self.token in t for t in image.tags):
                for tag in image.tags:
                    self.client.images.remove(tag, force=True)


@pytest.fixture
def project(pytester: pytest.Pytester, client: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[BuildProject]:
    import pytest_madengine

    root = str(Path(pytest_madengine.__file__).resolve().parent.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    p = BuildProject(pytester, client, "madbuild" + uuid.uuid4().hex[:8])
    yield p
    p.cleanup()


@pytest.fixture(scope="module")
def registries() -> None:
    """The open and the htpasswd registry of .ci/setup-docker.sh answer (401 counts)."""
    import urllib.error
    import urllib.request

    for host in (OPEN_REGISTRY, AUTH_REGISTRY):
        try:
            urllib.request.urlopen(f"http://{host}/v2/", timeout=5)
        except urllib.error.HTTPError:
            pass  # 401: up, and wants a login
        except OSError as exc:
            unavailable(f"registry {host} does not answer ({exc}); run .ci/setup-docker.sh")


def _testcases(path: Path) -> dict[str, ET.Element]:
    return {tc.get("name", ""): tc for tc in ET.parse(path).getroot().iter("testcase")}


def _all_text(project: Project, res: pytest.RunResult) -> str:
    texts = [res.stdout.str(), res.stderr.str()]
    for p in project.path.rglob("*"):
        if p.is_file() and p.name != "credential.json":
            texts.append(p.read_text(errors="replace"))
    return "\n".join(texts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_build_only_builds_in_parallel_and_runs_nothing(project: BuildProject) -> None:
    # A build needs neither the script nor the GPUs (a build host has none): beta's would not run here.
    a = project.built_model("alpha", "A")
    b = project.built_model("beta", "B", n_gpus="8", scripts="scripts/missing/run.sh")
    res = project.run("--mad-build-only", "--mad-build-jobs=2", "--junitxml=junit.xml", "--mad-build-perf-rows",
                      "--mad-target-archs=gfx942,gfx90a", "--mad-gpus=0-1")
    res.assert_outcomes(passed=2)
    res.stdout.fnmatch_lines(["*build phase: 2 model(s), 2 build(s) at a time*", "*[[]2/2[]]*built*"])
    assert not project.containers(a) and not project.containers(b)  # nothing ran
    assert not (project.path / "mad_work" / a / "run.sh").exists()
    cases = _testcases(project.path / "junit.xml")
    assert set(cases) == {a, b}
    doc = project.manifest()
    images = doc["built_images"]
    want = {f"ci-{m}_{s}.any_{arch}" for m, s in ((a, "alpha"), (b, "beta")) for arch in ("gfx942", "gfx90a")}
    assert set(images) == want
    for key, entry in images.items():
        arch = key.rsplit("_", 1)[1]
        assert entry["gpu_architecture"] == arch and entry["build_args"]["MAD_SYSTEM_GPU_ARCHITECTURE"] == arch
        assert entry["docker_sha"] == project.client.images.get(key).id  # no registry: the local image id
        assert len(entry["build_hash"]) == 64 and entry["build_duration"] > 0
        assert key in doc["built_models"]
    assert doc["summary"]["failed_builds"] == [] and len(doc["summary"]["successful_builds"]) == 4
    rows = list(csv.DictReader((project.path / "perf.csv").open()))
    assert {r["model"]: r["status"] for r in rows} == {a: "SUCCESS", b: "SUCCESS"}
    assert all(r["build_duration"] and not r["performance"] for r in rows)
    # Warm: nothing changed, nothing built; without --mad-build-perf-rows no row is added.
    (project.path / "perf.csv").unlink()
    res = project.run("--mad-build-only", "--mad-target-archs=gfx942,gfx90a")
    res.assert_outcomes(passed=2)
    res.stdout.fnmatch_lines(["*up to date (reused)*"])
    assert not (project.path / "perf.csv").exists()


def test_build_only_under_xdist_writes_one_manifest(project: BuildProject) -> None:
    names = [project.built_model(f"x{i}", f"X{i}") for i in range(2)]
    res = project.run_subprocess("--mad-build-only", "-n", "2")
    res.assert_outcomes(passed=2)
    assert sorted(e["model"] for e in project.manifest()["built_images"].values()) == sorted(names)


def test_failed_build_fails_its_testcase_only(project: BuildProject) -> None:
    good = project.built_model("good", "G")
    project.dockerfile("docker/bad", "ARG BASE_DOCKER\nFROM ${BASE_DOCKER}\nRUN echo broken-step && exit 3\n")
    bad = project.model("bad", SCRIPT, dockerfile="docker/bad")
    res = project.run("--mad-build-only", "--junitxml=junit.xml")
    res.assert_outcomes(passed=1, failed=1)
    cases = _testcases(project.path / "junit.xml")
    failure = cases[bad].find("failure")
    assert failure is not None and "broken-step" in (failure.get("message", "") + (failure.text or ""))
    doc = project.manifest()
    assert [e["model"] for e in doc["built_images"].values()] == [good]
    assert [f["model"] for f in doc["summary"]["failed_builds"]] == [bad]
    assert not (project.path / "perf.csv").exists()


def test_push_then_run_from_manifest_elsewhere(project: BuildProject, registries: None) -> None:
    m = project.built_model("pushed", "P")
    reg = f"{OPEN_REGISTRY}/madbuild"
    res = project.run("--mad-build-only", f"--mad-registry={reg}")
    res.assert_outcomes(passed=1)
    entry = next(iter(project.manifest()["built_images"].values()))
    assert entry["registry"] == reg
    assert entry["registry_image"] == f"{reg}/ci-{m}_pushed.any:{entry['build_hash']}".lower()
    assert entry["docker_sha"].startswith("sha256:") and entry["docker_sha"] != entry["image_id"]
    # Unchanged inputs: the push is a no-op.
    res = project.run("--mad-build-only", f"--mad-registry={reg}")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["*already in the registry*push skipped*"])
    before = (project.path / "build_manifest.json").read_bytes()
    project.remove_local()
    res = project.run("--mad-manifest=build_manifest.json", "--junitxml=junit.xml", tags="")
    res.assert_outcomes(passed=1)
    build_log = project.log(m, build=True)
    assert f"pulled {entry['registry_image']}" in build_log and f"digest {entry['docker_sha']} verified" in build_log
    assert "model=" + m in project.log(m) and "P" in project.log(m)
    assert (project.path / "build_manifest.json").read_bytes() == before  # a run never rewrites it
    row = list(csv.DictReader((project.path / "perf.csv").open()))[-1]
    assert row["docker_sha"] == entry["docker_sha"] and row["docker_image"] == entry["registry_image"]


def test_manifest_digest_mismatch_and_unknown_model(project: BuildProject, registries: None) -> None:
    m = project.built_model("mism", "M")
    other = project.model("notbuilt", SCRIPT)
    res = project.run("--mad-build-only", f"--mad-registry={OPEN_REGISTRY}/madbuild", tags=m)
    res.assert_outcomes(passed=1)
    doc = project.manifest()
    entry = next(iter(doc["built_images"].values()))
    entry["docker_sha"] = "sha256:" + "0" * 64
    (project.path / "wrong.json").write_text(json.dumps(doc))
    project.remove_local()
    res = project.run("--mad-manifest=wrong.json", tags=f"{m},{other}")
    res.assert_outcomes(failed=2)
    res.stdout.fnmatch_lines([f"*{m}: digest mismatch for {entry['registry_image']}: the manifest says sha256:000*",
                              f"*{other}: model '{other}' is not in the manifest *wrong.json*"])
    assert not project.containers(m)


def test_push_to_auth_registry_keeps_the_password_out(project: BuildProject, registries: None) -> None:
    (project.path / "credential.json").write_text(json.dumps(
        {AUTH_REGISTRY: {"username": REG_USER, "password": REG_PASSWORD}}))
    m = project.built_model("authpush", "Q")
    res = project.run("--mad-build-only", f"--mad-registry={AUTH_REGISTRY}/madbuild", "--junitxml=junit.xml",
                      "--mad-build-perf-rows")
    res.assert_outcomes(passed=1)
    entry = next(iter(project.manifest()["built_images"].values()))
    assert entry["registry_image"].startswith(f"{AUTH_REGISTRY}/madbuild/ci-{m}")
    assert REG_PASSWORD not in _all_text(project, res)
    # ... and pulled back with the same login, digest checked.
    project.remove_local()
    res = project.run("--mad-manifest=build_manifest.json", tags="")
    res.assert_outcomes(passed=1)
    assert REG_PASSWORD not in _all_text(project, res)


def test_push_failures_fail_the_build(project: BuildProject, registries: None) -> None:
    wrong = "wrong-" + REG_PASSWORD
    (project.path / "credential.json").write_text(json.dumps({AUTH_REGISTRY: {"username": REG_USER, "password": wrong}}))
    m = project.built_model("nopush", "N")
    res = project.run("--mad-build-only", f"--mad-registry={AUTH_REGISTRY}/madbuild")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines([f"*{m}: login to {AUTH_REGISTRY} as {REG_USER}*failed*"])
    doc = project.manifest()
    assert doc["built_images"] == {} and doc["summary"]["failed_pushes"] == 1
    assert doc["push_failures"][0]["model"] == m
    text = _all_text(project, res)
    assert wrong not in text and REG_PASSWORD not in text

def test_push_to_a_registry_that_went_down(project: BuildProject, tmp_path: Path) -> None:
    """A throwaway registry of our own (never the shared ones): a push works, then it stops and
    the next push fails that model's build with the daemon's answer."""
    import shutil
    import subprocess
    import time
    import urllib.error
    import urllib.request

    if shutil.which("docker-registry") is None:
        unavailable("docker-registry is not installed (.ci/setup-docker.sh installs it)")
    host = f"127.0.0.1:{_free_port()}"
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem: {{rootdirectory: {tmp_path}/data}}\n"
                      f"http: {{addr: {host}, secret: madbuild-throwaway}}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(60):
            try:
                urllib.request.urlopen(f"http://{host}/v2/", timeout=2)
                break
            except (urllib.error.URLError, OSError):
                time.sleep(0.25)
        m = project.built_model("down", "D1")
        res = project.run("--mad-build-only", f"--mad-registry={host}")
        res.assert_outcomes(passed=1)
    finally:
        proc.terminate()
        proc.wait(10)
    project.built_model("down", "D2")  # new inputs, new tag: a real push
    project.entries.pop()  # same model, its Dockerfile rewritten
    (project.path / "models.json").write_text(json.dumps(project.entries, indent=1))
    res = project.run("--mad-build-only", f"--mad-registry={host}", "--junitxml=junit.xml")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines([f"*{m}: push of {host}/ci-{m}_down.any:* failed*"])
    doc = project.manifest()
    assert doc["built_images"] == {} and doc["summary"]["failed_pushes"] == 1


def test_use_image_runs_every_model_in_it(project: BuildProject) -> None:
    m = project.model("given", 'echo "model=$MAD_MODEL_NAME"; echo "performance: 1 x"\n')
    res = project.run(f"--mad-use-image={BASE}")
    res.assert_outcomes(passed=1)
    assert f"--mad-use-image: {BASE}, no build" in project.log(m, build=True)
    assert list(csv.DictReader((project.path / "perf.csv").open()))[-1]["docker_image"] == BASE


def test_use_image_auto_runs_each_model_in_its_cards_image(project: BuildProject) -> None:
    """madengine's ``--use-image auto``: the card's env_vars.DOCKER_IMAGE_NAME; a card without
    one fails its own item, naming the field, and the other model still runs."""
    m = project.model("auto", 'echo "performance: 1 x"\n', env_vars={"DOCKER_IMAGE_NAME": BASE})
    bare = project.model("noimage", 'echo "performance: 1 x"\n')
    res = project.run("--mad-use-image=auto")
    res.assert_outcomes(passed=1, failed=1)
    res.stdout.fnmatch_lines([f"*{bare}*has no env_vars.DOCKER_IMAGE_NAME*"])
    rows = {r["model"]: r for r in csv.DictReader((project.path / "perf.csv").open())}
    assert rows[m]["docker_image"] == BASE and rows[bare]["status"] == "FAILURE"


def test_build_secrets_stay_out_of_the_image(project: BuildProject, monkeypatch: pytest.MonkeyPatch) -> None:
    canary = "canary-" + uuid.uuid4().hex
    cred_canary = "credcanary-" + uuid.uuid4().hex
    monkeypatch.setenv("MAD_SECRETS_CANARY", canary)
    (project.path / "credential.json").write_text(json.dumps({"MYCRED": {"username": "u", "password": cred_canary}}))
    fetch = ("python3 -c \"import sys,urllib.request as u;"
             "print(u.urlopen(sys.argv[1]).read().decode(),end='')\" ")
    project.dockerfile("docker/sec", (
        "ARG BASE_DOCKER\nFROM ${BASE_DOCKER}\nARG MAD_SECRETS_URL\nARG MAD_SECRETS_CANARY\n"
        f"RUN {fetch}\"$MAD_SECRETS_URL/MAD_SECRETS_CANARY\" | sha256sum > /canary.sha && "
        f"{fetch}\"$MAD_SECRETS_URL/MYCRED_PASSWORD\" | sha256sum > /cred.sha && "
        "echo \"arg=[$MAD_SECRETS_CANARY]\" > /arg.txt\n"))
    m = project.model("secret", 'cat /canary.sha /cred.sha /arg.txt; echo "performance: 1 x"\n',
                      dockerfile="docker/sec", cred="MYCRED")
    res = project.run("--mad-build-only", "--junitxml=junit.xml")
    res.assert_outcomes(passed=1)
    image = project.client.images.get(f"ci-{m}_sec.any")
    history = json.dumps(project.client.api.history(image.id))
    inspect = json.dumps(image.attrs)
    for secret in (canary, cred_canary):
        assert secret not in history and secret not in inspect
        assert secret not in _all_text(project, res)
    # It did reach the build: the image holds the secrets' hashes (and the ARG itself stayed empty).
    out = project.client.containers.run(image.id, ["cat", "/canary.sha", "/cred.sha", "/arg.txt"], remove=True).decode()
    assert hashlib.sha256(canary.encode()).hexdigest() in out
    assert hashlib.sha256(cred_canary.encode()).hexdigest() in out
    assert "arg=[]" in out
    assert "ARG MAD_SECRETS_CANARY: not passed as a build arg" in project.log(m, build=True)


def test_run_with_registry_pulls_before_building(project: BuildProject, registries: None) -> None:
    """What every node of a multi-node run does in its preparation (before the rendezvous):
    an image of the same inputs pushed by another host is pulled, not built again."""
    m = project.built_model("shared", "S")
    reg = f"{OPEN_REGISTRY}/madbuild"
    res = project.run(f"--mad-registry={reg}")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines([f"*pushed {reg}/ci-{m}_shared.any:*"])
    project.remove_local()
    res = project.run(f"--mad-registry={reg}")
    res.assert_outcomes(passed=1)
    assert "(same build inputs, built elsewhere), no build" in project.log(m)
    row = list(csv.DictReader((project.path / "perf.csv").open()))[-1]
    assert row["build_duration"] == "" and row["status"] == "SUCCESS"


def test_multi_node_run_pulls_the_manifest_image_on_every_node(project: BuildProject, registries: None) -> None:
    """Two nodes (two pytest processes) run from one manifest: each pulls the pushed image and
    checks its digest in its preparation, before the rendezvous; neither builds."""
    m = project.built_model("nodes", "Z")
    res = project.run("--mad-build-only", f"--mad-registry={OPEN_REGISTRY}/madbuild")
    res.assert_outcomes(passed=1)
    entry = next(iter(project.manifest()["built_images"].values()))
    project.remove_local()
    port = free_port_pair()
    nodes = Nodes(project.path, executor="docker", tags=m)
    for rank in (0, 1):
        ctx = node_context(rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, rendezvous_timeout=120,
                           docker_build_arg={"BASE_DOCKER": BASE})
        nodes.start(rank, ctx, "--mad-manifest=build_manifest.json")
    n0, n1 = nodes.wait(timeout=300)
    assert (n0.rc, n1.rc) == (0, 0), show([n0, n1])
    for node in (n0, n1):
        build_log = (node.dir / "logs" / f"{m}.build.log").read_text()
        assert f"digest {entry['docker_sha']} verified" in build_log, build_log
        assert "on every node before the rendezvous" in node.out
        assert "Step 1/" not in node.out  # nothing built


def test_a_slurm_job_runs_the_pushed_image_on_two_nodes(project: BuildProject, registries: None) -> None:
    """Build once, then a SLURM job (slurm_args, 2 nodes) from the manifest: every node pulls
    the image by its digest and runs the script in it; nothing is built on the nodes."""
    if shutil.which("sbatch") is None:
        unavailable("SLURM is not installed; run .ci/setup-slurm.sh")
    secret = f"slurm-img-secret-{project.token}"  # a secret variable: through the nodes' 0600 files
    m = project.built_model("slurmimg", "S2", env_vars={"HF_TOKEN": secret})
    (project.path / "scripts" / "slurmimg" / "run.sh").write_text(
        '#!/bin/bash\nset -u\necho "token $(printf %s "$HF_TOKEN" | sha256sum | cut -c1-16)"\n' + SCRIPT)
    res = project.run("--mad-build-only", f"--mad-registry={OPEN_REGISTRY}/madbuild")
    res.assert_outcomes(passed=1)
    entry = next(iter(project.manifest()["built_images"].values()))
    project.remove_local()
    ctx = project.context(slurm_args={"PARTITION": "debug", "TIME": "2", "NODES": 2})
    res = project.run("--mad-manifest=build_manifest.json", "--mad-executor=slurm", tags="", context=ctx)
    res.assert_outcomes(passed=1)
    log = project.log(m)
    pinned = entry["registry_image"].rsplit(":", 1)[0] + "@" + entry["docker_sha"]
    assert f"docker pull {pinned}" in log, log
    for rank in (0, 1):
        assert f"node {rank} pulls {entry['registry_image']}" in log, log
    assert log.count("S2") >= 2, log  # /built-by.txt of the pushed image, read on both nodes
    assert log.count(f"token {hashlib.sha256(secret.encode()).hexdigest()[:16]}") == 2 and secret not in log, log
    assert secret not in (project.path / "build_manifest.json").read_text()
    row = project.perf()[-1]
    assert row["status"] == "SUCCESS" and row["performance"] == "7.5", row
