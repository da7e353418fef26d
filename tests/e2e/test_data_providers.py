"""Data providers end to end, with the demo zoo's data models (models.json + data.json +
scripts/dummy_data at the repository root): local (read-only mount in Docker), custom script,
NAS over a real sshd (rsync into a mirror, sshfs without one), MinIO and AWS over moto's S3
server, a dataname no provider serves, and canary credentials that must never show."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import DOCKER_BASE
from .data_servers import S3, Nas, free_port, nas, s3

__all__ = ["nas", "s3"]  # fixtures of data_servers, used by this module's tests

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_CTX = {"docker_build_arg": {"BASE_DOCKER": DOCKER_BASE}}


@pytest.fixture
def zoo(pytester: pytest.Pytester) -> Path:
    for name in ("models.json", "data.json"):
        shutil.copy(REPO_ROOT / name, pytester.path / name)
    shutil.copytree(REPO_ROOT / "scripts" / "dummy_data", pytester.path / "scripts" / "dummy_data")
    shutil.copytree(REPO_ROOT / "docker", pytester.path / "docker")
    return pytester.path


def run(pytester: pytest.Pytester, executor: str, tags: str, ctx: dict[str, Any] | None = None,
        *more: str) -> pytest.RunResult:
    context = dict(DOCKER_CTX if executor == "docker" else {}, **(ctx or {}))
    return pytester.runpytest("-p", "no:cacheprovider", f"--mad-executor={executor}", f"--mad-tags={tags}",
                              f"--mad-context={json.dumps(context)}", "--junitxml=junit.xml", *more)


def perf(path: Path) -> dict[str, dict[str, str]]:
    with open(path / "perf.csv", newline="") as fh:
        return {r["model"]: r for r in csv.DictReader(fh)}


def mounted(path: Path) -> bool:
    return any(line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines())


def test_local_read_only_and_custom_script_in_docker(pytester: pytest.Pytester, zoo: Path, client: Any) -> None:
    res = run(pytester, "docker", "dummy_data_local", {"model_args": "--expect-readonly"})
    res.assert_outcomes(passed=1)
    log = (zoo / "mad_logs/dummy_data_local.log").read_text()
    assert "datahome=/data_dlm_0" in log and "data /data_dlm_0 is read-only" in log, log
    res = run(pytester, "docker", "dummy_data_custom")
    res.assert_outcomes(passed=1)
    log = (zoo / "mad_logs/dummy_data_custom.log").read_text()
    assert "made 4 words" in log and "data /data_dlm_0: 4 words" in log, log
    rows = perf(zoo)
    assert (rows["dummy_data_local"]["dataname"], rows["dummy_data_local"]["data_provider_type"]) == (
        "demo_local", "local")
    custom = rows["dummy_data_custom"]
    assert custom["data_provider_type"] == "custom" and custom["data_size"] and custom["data_download_duration"]
    assert not (zoo / "mad_work/.mad_data/dummy_data_custom/demo_custom").exists()  # this run's copy is removed after it


def test_nas_rsync_into_the_mirror_and_sshfs_without(pytester: pytest.Pytester, zoo: Path, nas: Nas,
                                                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (nas.root / "words.txt").write_text("a\nb\n")
    (nas.root / "words.txt").chmod(0o644)
    monkeypatch.setenv("NAS_NODES", nas.nodes_env())
    ctx = {"data": {"demo_nas": {"nas": {"path": str(nas.root)}}}}  # the context replaces data.json's entry
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    res = run(pytester, "local", "dummy_data_nas", ctx, f"--mad-force-mirror-local={mirror}")
    res.assert_outcomes(passed=1)
    assert (mirror / "demo_nas" / "words.txt").read_text() == "a\nb\n"  # kept in the mirror
    log = (zoo / "mad_logs/dummy_data_nas.log").read_text()
    assert f"datahome={mirror}/demo_nas" in log and "sshpass -e rsync" in log, log
    row = perf(zoo)["dummy_data_nas"]
    assert row["data_provider_type"] == "nas" and row["data_size"] and row["data_download_duration"]
    # without a mirror: an sshfs mount in the run folder, gone after the run
    res = run(pytester, "local", "dummy_data_nas", ctx)
    res.assert_outcomes(passed=1)
    log = (zoo / "mad_logs/dummy_data_nas.log").read_text()
    assert "sshfs " in log and "data " in log and ": 2 words" in log, log
    mount = zoo / "mad_work/.mad_data/dummy_data_nas/demo_nas"
    assert not mounted(mount) and not mount.exists()
    for text in (log, res.stdout.str(), (zoo / "perf.csv").read_text(), (zoo / "junit.xml").read_text()):
        assert nas.password not in text


def test_minio_then_aws_when_minio_does_not_answer(pytester: pytest.Pytester, zoo: Path, s3: S3,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    login = {"USERNAME": s3.access_key, "PASSWORD": s3.secret_key}
    monkeypatch.setenv("MAD_MINIO", json.dumps({**login, "MINIO_ENDPOINT": s3.endpoint}))
    res = run(pytester, "local", "dummy_data_s3")
    res.assert_outcomes(passed=1)
    row = perf(zoo)["dummy_data_s3"]
    assert row["data_provider_type"] == "minio" and row["data_size"] and row["data_download_duration"]
    assert "performance: 5 words_read" in (zoo / "mad_logs/dummy_data_s3.log").read_text()
    # MinIO down: the next provider in madengine's order (aws) serves it
    monkeypatch.setenv("MAD_MINIO", json.dumps({**login, "MINIO_ENDPOINT": f"http://127.0.0.1:{free_port()}"}))
    (zoo / "credential.json").write_text(json.dumps({"MAD_AWS_S3": {**login, "AWS_ENDPOINT_URL_S3": s3.endpoint}}))
    res = run(pytester, "local", "dummy_data_s3")
    res.assert_outcomes(passed=1)
    log = (zoo / "mad_logs/dummy_data_s3.log").read_text()
    assert "minio cannot serve it: endpoint http://127.0.0.1:" in log and "served by aws" in log, log
    assert perf(zoo)["dummy_data_s3"]["data_provider_type"] == "aws"
    # a single object (not a prefix) is synced alone, as madengine does
    ctx = {"data": {"demo_s3": {"aws": {"path": f"s3://{s3.bucket}/single.txt"}}}}
    res = run(pytester, "local", "dummy_data_s3", ctx)
    res.assert_outcomes(failed=1)  # the demo model wants words.txt: it ran, with single.txt in its folder
    assert "missing" in (zoo / "mad_logs/dummy_data_s3.log").read_text()
    for text in (log, res.stdout.str(), (zoo / "perf.csv").read_text(), (zoo / "junit.xml").read_text()):
        assert s3.secret_key not in text


def test_a_dataname_no_provider_serves_fails_before_the_model_runs(
        pytester: pytest.Pytester, zoo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_NODES", json.dumps([{"NAME": "gone", "HOST": "127.0.0.1", "PORT": free_port(),
                                                 "USERNAME": "u", "PASSWORD": "nas-canary-unused"}]))
    ctx = {"data": {"demo_local": {"local": {"path": "scripts/dummy_data/nothere"}, "nas": {"path": "/x"}}}}
    res = run(pytester, "local", "dummy_data_local", ctx)
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*dataname 'demo_local': no provider can serve it (tried in madengine's order: "
                              "local: *nothere does not exist; nas: no NAS node answers (gone 127.0.0.1:*"])
    log = (zoo / "mad_logs/dummy_data_local.log").read_text()
    assert "model=" not in log  # the script never ran
    row = perf(zoo)["dummy_data_local"]
    assert row["status"] == "FAILURE" and row["dataname"] == "demo_local"
    assert "nas-canary-unused" not in res.stdout.str() + log
    # a dataname missing from data.json fails the same way, naming what is defined
    res = run(pytester, "local", "dummy_data_local", {"data": {}}, "--mad-data-config=none.json")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*--mad-data-config *none.json: no such file*"])


def test_credentials_never_reach_logs_junit_perf_csv_or_the_container(
        pytester: pytest.Pytester, zoo: Path, client: Any, nas: Nas, s3: S3,
        monkeypatch: pytest.MonkeyPatch) -> None:
    (nas.root / "words.txt").write_text("a\nb\n")
    (nas.root / "words.txt").chmod(0o644)
    monkeypatch.setenv("NAS_NODES", nas.nodes_env())
    monkeypatch.setenv("MAD_MINIO", json.dumps({"USERNAME": s3.access_key, "PASSWORD": s3.secret_key,
                                                "MINIO_ENDPOINT": s3.endpoint}))
    ctx = {"data": {"demo_nas": {"nas": {"path": str(nas.root)}}}}
    res = run(pytester, "docker", "data_demo", ctx, "--mad-keep-alive", "-rA")
    try:
        res.assert_outcomes(passed=2)  # the NAS over sshfs, bind-mounted into the container; S3 synced
        inspected = [c.attrs for c in client.containers.list(all=True, filters={"label": "org.pytest-madengine.keep-alive"}, ignore_removed=True)
                     if str(zoo) in json.dumps(c.attrs.get("Mounts", []))]
    finally:
        for c in client.containers.list(all=True, filters={"label": "org.pytest-madengine.keep-alive"}, ignore_removed=True):
            if str(zoo) in json.dumps(c.attrs.get("Mounts", [])):
                c.remove(force=True)
    assert len(inspected) == 2
    texts = {"stdout": res.stdout.str(), "junit": (zoo / "junit.xml").read_text(),
             "perf.csv": (zoo / "perf.csv").read_text(), "inspect": json.dumps(inspected)}
    texts.update({p.name: p.read_text() for p in (zoo / "mad_logs").glob("*.log")})
    for where, text in texts.items():
        for canary in (nas.password, s3.secret_key):
            assert canary not in text, f"{canary} in {where}"
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False).stdout
    assert nas.password not in ps and s3.secret_key not in ps


def test_a_dry_run_names_the_providers_and_fetches_nothing(pytester: pytest.Pytester, zoo: Path) -> None:
    res = run(pytester, "local", "data", None, "--mad-dry-run")
    res.stdout.fnmatch_lines([
        "*data 'demo_local': the first of local (scripts/dummy_data/sample) that serves it (not fetched in a dry run)",
        "*data 'demo_custom': the first of custom (scripts/dummy_data/make_data.sh) that serves it*"])
    assert not (zoo / "mad_work").exists()  # no script ran, nothing was fetched
