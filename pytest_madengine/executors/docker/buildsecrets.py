"""Secrets a build needs (``MAD_SECRETS*`` of the host, the model card's ``cred`` entry of
``credential.json``), handed to it without landing in the image.

madengine passes them as ``--build-arg``: the legacy builder then writes every one into the
history of each ``RUN`` after its ``ARG`` (``docker history --no-trunc`` shows them) and into
the build cache key. BuildKit's ``--mount=type=secret`` is the right tool, but the engine here
(Docker 20.10 daemon, client 28 without the buildx plugin) cannot run BuildKit builds from the
CLI, and the Python SDK's ``build()`` has no secrets at all. So the closest that works:

- no secret is ever a build arg (a Dockerfile's ``ARG MAD_SECRETS_X`` stays empty; the build
  log says so);
- for the length of one build a loopback HTTP endpoint serves the secrets under a random
  one-time token; a Dockerfile that declares ``ARG MAD_SECRETS_URL`` gets its address and reads
  a secret with e.g. ``RUN tok=$(python3 -c "import urllib.request as u;
  print(u.urlopen('$MAD_SECRETS_URL/MAD_SECRETS_HFTOKEN').read().decode())") && ...`` in the
  same ``RUN`` that uses it (builds run with host networking). History then holds only that
  URL, dead once the build ends; the token is not part of the inputs' hash.
"""

from __future__ import annotations

import http.server
import secrets as pysecrets
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pytest_madengine.executors.docker import manifest

URL_ARG = "MAD_SECRETS_URL"


def build_secrets(env: Mapping[str, str], cred_name: str, entries: Mapping[str, Any]) -> dict[str, str]:
    """name -> value: the host's ``MAD_SECRETS*`` variables, then ``<CRED>_<KEY>`` for each
    string field of the card's ``cred`` entry in credential.json (madengine's names)."""
    out = {k: v for k, v in env.items() if k.startswith("MAD_SECRETS") and k != URL_ARG and v}
    if cred_name:
        entry = entries.get(cred_name)
        if isinstance(entry, Mapping):
            for key, value in entry.items():
                if isinstance(value, str) and value:
                    out[f"{cred_name}_{key}".upper()] = value
    return out


def withheld(dockerfile_text: str, names: Mapping[str, str]) -> list[str]:
    """Secret names the Dockerfile declares as ``ARG``: madengine would pass them, we do not."""
    declared = set()
    for line in dockerfile_text.splitlines():
        words = line.strip().split(None, 1)
        if len(words) == 2 and words[0].upper() == "ARG":
            declared.add(words[1].split("=", 1)[0].strip())
    return sorted(n for n in declared if n in names or manifest.is_secret_name(n) and n != URL_ARG)


def wants_endpoint(dockerfile_text: str) -> bool:
    return any(ln.strip().upper().startswith("ARG ") and ln.split(None, 1)[1].split("=", 1)[0].strip() == URL_ARG
               for ln in dockerfile_text.splitlines() if len(ln.split(None, 1)) == 2)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _SecretServer

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        prefix = f"/{self.server.token}/"
        value = None
        if self.path.startswith(prefix):
            value = self.server.values.get(self.path[len(prefix):])
        if value is None:
            self.send_response(404)
            self.end_headers()
            return
        body = value.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        pass  # request lines hold the token: never logged


class _SecretServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.values = dict(values)
        self.token = pysecrets.token_hex(16)


@contextmanager
def endpoint(values: Mapping[str, str]) -> Iterator[str]:
    """A loopback URL serving ``values`` for the duration of the block (one build)."""
    server = _SecretServer(values)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                              name="mad-build-secrets")
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}/{server.token}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
