"""Real servers for the data-provider tests: an sshd on a loopback port (password login for a
dedicated user, as madengine's NAS nodes) and moto's S3 server as its own process. Started and
stopped per test module; under CI=true a missing tool fails instead of skipping."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .multinode_helpers import unavailable

NAS_USER = "madnas"  # .ci/setup-data.sh creates it; the fixture sets a fresh password each session


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} does not answer on 127.0.0.1:{port} after {timeout:g} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class Nas:
    port: int
    user: str
    password: str  # a canary: must never show in logs, JUnit, perf.csv or docker inspect
    root: Path  # the NAS's exported folder (on this host, read over ssh)

    def nodes_env(self, port: int | None = None) -> str:
        import json
        return json.dumps([{"NAME": "loopback", "HOST": "127.0.0.1", "PORT": str(port or self.port),
                            "USERNAME": self.user, "PASSWORD": self.password}])


def nas_server(tmp: Path) -> Iterator[Nas]:
    """``tmp`` must be reachable by the NAS user (pytest's own temp folders are private)."""
    for tool in ("/usr/sbin/sshd", "sshpass", "rsync", "sshfs", "fusermount"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is missing; run .ci/setup-data.sh")
    if os.geteuid() != 0:
        unavailable("the NAS test server needs root (a user and its password for sshd)")
    if subprocess.run(["id", NAS_USER], capture_output=True, check=False).returncode != 0:
        unavailable(f"user {NAS_USER} is missing; run .ci/setup-data.sh")
    password = "nas-canary-" + secrets.token_hex(8)
    subprocess.run(["chpasswd"], input=f"{NAS_USER}:{password}\n".encode(), check=True)
    tmp.mkdir(parents=True, exist_ok=True)
    tmp.chmod(0o755)
    key = tmp / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    port = free_port()
    cfg = tmp / "sshd_config"
    cfg.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {key}\nPidFile {tmp / 'sshd.pid'}\n"
                   "PasswordAuthentication yes\nKbdInteractiveAuthentication no\nUsePAM yes\n"
                   f"PermitRootLogin no\nAllowUsers {NAS_USER}\nSubsystem sftp internal-sftp\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    export = tmp / "export"
    export.mkdir()
    export.chmod(0o755)
    with open(tmp / "sshd.log", "wb") as log:
        proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_port(port, proc, "sshd")
        yield Nas(port=port, user=NAS_USER, password=password, root=export)
    finally:
        stop(proc)


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str  # a canary

    def client(self):  # type: ignore[no-untyped-def]
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-2",
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)


def s3_server(tmp: Path) -> Iterator[S3]:
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as exc:
        unavailable(f"{exc.name} is missing: pip install -e '.[test]' (moto[server], boto3)")
    if shutil.which("aws") is None:
        unavailable("the aws command is missing: pip install -e '.[test]' (awscli)")
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    with open(tmp / "moto.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_port(port, proc, "moto_server")
        s3 = S3(endpoint=f"http://127.0.0.1:{port}", bucket="mad-demo", access_key="AKIADATACANARY",
                secret_key="s3-canary-" + secrets.token_hex(8))
        c = s3.client()
        c.create_bucket(Bucket=s3.bucket, CreateBucketConfiguration={"LocationConstraint": "us-east-2"})
        c.put_object(Bucket=s3.bucket, Key="words/words.txt", Body=b"one\ntwo\nthree\nfour\nfive\n")
        c.put_object(Bucket=s3.bucket, Key="single.txt", Body=b"x\n")
        yield s3
    finally:
        stop(proc)


# Module-scoped fixtures for test modules that import them (one server per module).
@pytest.fixture(scope="module")
def nas() -> Iterator[Nas]:
    folder = Path(tempfile.mkdtemp(prefix="mad-data-nas-"))  # the NAS user must reach it: not under pytest's own
    try:
        yield from nas_server(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    yield from s3_server(tmp_path_factory.mktemp("s3"))
