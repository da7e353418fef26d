"""The ``minio`` and ``aws`` providers: ``aws s3 sync`` into ``<mirror>/<dataname>`` or the
run folder. Keys travel in the sync's environment only (AWS_ACCESS_KEY_ID/SECRET)."""

from __future__ import annotations

import posixpath
import shutil
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from pytest_madengine.data.config import Source
from pytest_madengine.data.credentials import Credentials, S3Login
from pytest_madengine.data.plan import Fetch, Step, Unusable, data_folder, default_home

SYNC_TIMEOUT_S = 3600.0  # madengine's
Probe = Callable[[str], str | None]  # endpoint URL -> why it does not answer, None when it does


def login_of(provider: str, creds: Credentials) -> S3Login:
    return creds.minio if provider == "minio" else creds.aws


def endpoint_to_probe(provider: str, login: S3Login) -> str:
    return login.endpoint or f"https://s3.{login.region}.amazonaws.com"


def plan(source: Source, index: int, creds: Credentials, scratch: Path, probe: Probe,
         which: Callable[[str], str | None] = shutil.which) -> Fetch:
    login = login_of(source.provider, creds)
    endpoint = endpoint_to_probe(source.provider, login)
    problem = probe(endpoint)
    if problem is not None:
        raise Unusable(f"endpoint {endpoint} {problem}")
    if which("aws") is None:
        raise Unusable("the aws command is not found on this host (pip install awscli)")
    folder, transient = data_folder(source, scratch)
    base = ["aws", *(["--endpoint-url", login.endpoint] if login.endpoint else []), "--region", login.region,
            "s3", "sync", "--only-show-errors"]
    # A prefix syncs its content; a single object (nothing under "<path>/") syncs alone, as madengine does.
    steps = [Step(argv=(*base, source.path.rstrip("/") + "/", str(folder)), timeout=SYNC_TIMEOUT_S)]
    url = urlsplit(source.path)
    key = url.path.strip("/")
    if key and not source.path.endswith("/"):
        parent = f"s3://{url.netloc}/{posixpath.dirname(key)}".rstrip("/") + "/"
        steps.append(Step(argv=(*base, parent, str(folder), "--exclude", "*", "--include", posixpath.basename(key)),
                          timeout=SYNC_TIMEOUT_S, only_if_empty=True))
    secret = {"AWS_ACCESS_KEY_ID": login.username, "AWS_SECRET_ACCESS_KEY": login.password} if login.username \
        else {}
    return Fetch(source=source, host_dir=folder, home=default_home(source, index), readonly=False,
                 steps=tuple(steps), env={"AWS_EC2_METADATA_DISABLED": "true"}, secret_env=secret,
                 transient=transient, sized=True, via=endpoint)
