"""Unit tests for pytest_madengine.registry: image references, credential.json, redaction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_madengine.executors.docker import registry
from pytest_madengine.executors.docker.registry import Credential, CredentialError

SECRET = "pa55-w0rd-xyz"


@pytest.mark.parametrize("image, host", [
    ("ubuntu:22.04", "docker.io"),
    ("rocm/pytorch:latest", "docker.io"),
    ("docker.io/rocm/pytorch", "docker.io"),
    ("127.0.0.1:5001/mad/base:1", "127.0.0.1:5001"),
    ("localhost/base", "localhost"),
    ("localhost:5000/base:1", "localhost:5000"),
    ("registry.example.com/team/img@sha256:" + "a" * 64, "registry.example.com"),
    ("mad-base:bookworm", "docker.io"),  # a ':' without '/' is a tag, not a port
])
def test_registry_of(image: str, host: str) -> None:
    assert registry.registry_of(image) == host


def write_creds(tmp_path: Path, data: object) -> None:
    (tmp_path / "credential.json").write_text(json.dumps(data))


def test_no_credential_file(tmp_path: Path) -> None:
    entries, path = registry.load_credentials(tmp_path)
    assert entries == {} and path.endswith("credential.json")


def test_entry_per_registry_host(tmp_path: Path) -> None:
    write_creds(tmp_path, {"127.0.0.1:5001": {"username": "u", "password": SECRET},
                           "dockerhub": {"username": "hub", "password": "hubpass", "repository": "r"}})
    entries, _ = registry.load_credentials(tmp_path)
    cred = registry.credential_for("127.0.0.1:5001", entries, env={})
    assert cred == Credential("127.0.0.1:5001", "u", SECRET, "credential.json '127.0.0.1:5001'")
    assert registry.credential_for("127.0.0.1:5000", entries, env={}) is None
    hub = registry.credential_for("docker.io", entries, env={})
    assert hub is not None and (hub.username, hub.password) == ("hub", "hubpass")


def test_entry_keys_may_carry_a_scheme(tmp_path: Path) -> None:
    entries = {"https://reg.example.com/": {"username": "u", "password": SECRET}}
    cred = registry.credential_for("reg.example.com", entries, env={})
    assert cred is not None and cred.username == "u"


def test_env_overrides_dockerhub_entry() -> None:
    entries = {"dockerhub": {"username": "file", "password": "filepass"}}
    env = {"MAD_DOCKERHUB_USER": "envuser", "MAD_DOCKERHUB_PASSWORD": "envpass"}
    cred = registry.credential_for("docker.io", entries, env=env)
    assert cred is not None and (cred.username, cred.password) == ("envuser", "envpass")
    assert "MAD_DOCKERHUB" in cred.source
    # the Docker Hub env vars are not used for other registries
    assert registry.credential_for("ghcr.io", {}, env=env) is None


def test_password_never_in_repr() -> None:
    cred = Credential("r", "u", SECRET, "x")
    assert SECRET not in repr(cred) and SECRET not in str(cred)


@pytest.mark.parametrize("content, match", [
    ("[1, 2]", "must hold a JSON object with one entry per registry, got list"),
    ('{"dockerhub": {"username": "u", "password": "' + SECRET + '"', "not valid JSON"),
])
def test_bad_file_is_reported_without_its_content(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / "credential.json").write_text(content)
    with pytest.raises(CredentialError, match=match) as info:
        registry.load_credentials(tmp_path)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("entry, match", [
    ("just-a-string", "must be an object with username and password"),
    ({"username": "u"}, "needs both 'username' and 'password'"),
])
def test_bad_entries(entry: object, match: str) -> None:
    with pytest.raises(CredentialError, match=match):
        registry.credential_for("reg.io", {"reg.io": entry}, env={})


def test_secrets_and_redact() -> None:
    entries = {"reg.io": {"username": "u", "password": SECRET}, "NAS_NODES": [{"x": 1}],
               "MAD_AWS_S3": {"USERNAME": "a", "PASSWORD": "aws-secret-1"}, "dockerhub": {"password": "abc"}}
    env = {"MAD_DOCKERHUB_PASSWORD": "env-secret", "MAD_SECRETS_HF_TOKEN": "hf_123456", "PATH": "/bin"}
    secrets = registry.secrets_of(entries, env)
    assert secrets == {SECRET, "aws-secret-1", "env-secret", "hf_123456"}  # "abc": too short to scrub safely
    text = f"login failed for u with {SECRET}; token hf_123456"
    assert registry.redact(text, secrets) == "login failed for u with ***; token ***"


def test_login_registry_for_docker_hub_is_the_default() -> None:
    assert registry.login_registry("docker.io") is None
    assert registry.login_registry("127.0.0.1:5001") == "127.0.0.1:5001"
