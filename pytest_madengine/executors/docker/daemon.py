"""The connection to the Docker daemon, through the Docker SDK: one client, made on demand after
a short ping and dropped when the connection fails; every failure said on one line.

Cleanup, beyond each run's own container: the executor's ``close()`` removes whatever this
run still has, and its construction sweeps containers left by a pytest that was killed (owner
pid dead). Both find them by their ``org.pytest-madengine.*`` labels, never by name.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from pytest_madengine.errors import ExecutorError
from pytest_madengine.executors.docker import registry
from pytest_madengine.executors.docker.plan import (
    LABEL_KEEP_ALIVE,
    LABEL_OWNER,
    LABEL_OWNER_START,
    LABEL_RUN_ID,
    parse_owner,
    pid_namespace,
    process_start,
)

API_TIMEOUT_S = 30  # every API call but the streams (build, pull, logs, wait)
PING_TIMEOUT_S = 3
DOWN_MEMORY_S = 30  # how long "the daemon is not answering" is believed without asking again
SLICE_S = 0.1
REMOVE_TIMEOUT_S = 20


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


# ------------------------------------------------------------------ errors, one line each


def short_reason(exc: BaseException) -> str:
    """The innermost useful words of a (wrapped) connection error, on one line."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    best: str | None = None
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        name = type(e).__name__
        if "Timeout" in name or isinstance(e, TimeoutError | socket.timeout):
            return "no answer in time (timed out)"
        if isinstance(e, OSError) and e.strerror:
            best = f"{e.strerror} (errno {e.errno})"
        for nxt in (e.__cause__, e.__context__, *[a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]):
            if nxt is not None:
                stack.append(nxt)
        reason = getattr(e, "reason", None)
        if isinstance(reason, BaseException):
            stack.append(reason)
    text = best or str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]


def daemon_error(exc: BaseException) -> ExecutorError:
    return ExecutorError(f"Docker daemon at {docker_host()} is not answering: {short_reason(exc)}")


def is_connection_error(exc: BaseException) -> bool:
    """A transport failure (no daemon, connection dropped, timeout), as opposed to an API answer."""
    import http.client

    import requests
    import urllib3
    from docker.errors import APIError, DockerException

    if isinstance(exc, APIError):
        return False
    # A daemon dying while it streams (a build's output) breaks the chunked answer in urllib3 itself.
    if isinstance(exc, requests.exceptions.RequestException | ConnectionError | TimeoutError
                  | urllib3.exceptions.HTTPError | http.client.HTTPException):
        return True
    return isinstance(exc, DockerException) and "Error while fetching server API version" in str(exc)


def api_message(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    text = explanation if isinstance(explanation, str) and explanation else str(exc)
    return " ".join(text.split())[:500]


_AUTH_REFUSALS = ("unauthorized", "authentication required", "no basic auth credentials", "denied", "forbidden",
                  "docker login")


def refused_for_credentials(message: str) -> bool:
    """Whether a registry error is about credentials: only then does "no credentials for X"
    help (a registry that went down mid-pull answers "connection refused")."""
    text = message.lower()
    return any(word in text for word in _AUTH_REFUSALS)


def spec_cred_hint(host: str) -> str:
    if registry.is_hub(host):
        return "credential.json ('dockerhub') or MAD_DOCKERHUB_USER/MAD_DOCKERHUB_PASSWORD"
    return f"credential.json (an entry '{host}' with username and password)"


def daemon_answers() -> tuple[bool, str]:
    """Whether a Docker daemon answers a ping within a few seconds, and a word on it."""
    try:
        import docker

        client = docker.from_env(timeout=PING_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - any failure means "no daemon"
        return False, daemon_error(exc).args[0]
    try:
        client.ping()
        version = client.api.version().get("Version", "?")
        return True, f"{docker_host()}, Docker {version}"
    except Exception as exc:  # noqa: BLE001
        return False, daemon_error(exc).args[0]
    finally:
        client.close()


def remove(client: Any, cid: str) -> bool:
    """Force-remove a container (and its anonymous volumes); True when it is gone."""
    from docker.errors import NotFound

    try:
        client.api.remove_container(cid, force=True, v=True)
        return True
    except NotFound:
        return True
    except Exception:  # noqa: BLE001 - close() and the next session's sweep try again
        return False


def ours(client: Any, label: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = client.api.containers(all=True, filters={"label": label})
    return found


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Daemon:
    """The client this executor talks through, and what the last ping said."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock  # the executor's, shared with its image builder (see DockerExecutor)
        self._client: Any = None
        self._down: tuple[float, str] | None = None  # (when, why) the daemon last failed a ping

    def connect(self) -> Any:
        with self._lock:
            if self._client is not None:
                return self._client
            # A short ping first: a daemon that accepts but never answers costs seconds, not minutes.
            down = self.ping_fresh()
            if down is not None:
                raise ExecutorError(f"Docker daemon at {docker_host()} is not answering: {down}")
            try:
                import docker

                self._client = docker.from_env(timeout=API_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001
                raise daemon_error(exc) from None
            return self._client

    def client_or_problem(self) -> Any:
        """The client, after checking (on a new, short-timeout connection) that the daemon answers."""
        if self._client is not None:
            down = self.ping_fresh()
            if down is not None:
                self.drop_client()
                raise ExecutorError(f"Docker daemon at {docker_host()} is not answering: {down}")
            return self._client
        return self.connect()

    def drop_client(self) -> None:
        with self._lock:
            if self._client is not None:
                try:
                    self._client.close()
                except Exception:  # noqa: BLE001
                    pass
                self._client = None

    def ping_fresh(self) -> str | None:
        """None when the daemon answers a ping on a new connection, else why not (one line).
        A failure is remembered for DOWN_MEMORY_S, so that a run of many models against a dead
        daemon fails each at once instead of waiting out a ping timeout per model."""
        if self._down is not None and time.monotonic() - self._down[0] < DOWN_MEMORY_S:
            return self._down[1]
        reason = self._ping_once()
        self._down = None if reason is None else (time.monotonic(), reason)
        return reason

    @staticmethod
    def _ping_once() -> str | None:
        try:
            import docker

            c = docker.from_env(timeout=PING_TIMEOUT_S)
            try:
                c.ping()
            finally:
                c.close()
            return None
        except Exception as exc:  # noqa: BLE001
            return short_reason(exc)

    def sweep_orphans(self) -> list[str]:
        """Remove containers whose owning pytest (on this host) is gone; keep-alive ones stay."""
        client = self.connect()
        host = socket.gethostname()
        ns = pid_namespace()
        removed: list[str] = []
        try:
            listed = ours(client, LABEL_OWNER)
        except Exception:  # noqa: BLE001
            return removed
        for c in listed:
            labels = c.get("Labels") or {}
            if labels.get(LABEL_KEEP_ALIVE) == "1":
                continue
            owner = parse_owner(labels.get(LABEL_OWNER, ""))
            if owner is None or owner[0] != host:
                continue
            # Another pid namespace (a pytest in a container with the host's name): its pids
            # mean nothing here. Labels without a namespace are judged by the pid, as before.
            if owner[2] is not None and owner[2] != ns:
                continue
            pid = owner[1]
            alive = _pid_alive(pid) and (not labels.get(LABEL_OWNER_START)
                                         or process_start(pid) == labels.get(LABEL_OWNER_START))
            if alive:
                continue
            if remove(client, c["Id"]):
                removed.append(((c.get("Names") or ["?"])[0]).lstrip("/"))
        return removed

    def remove_run(self, run_id: str) -> None:
        """Remove every container of run ``run_id`` that is not kept alive, and those of processes
        that died during it (an xdist worker killed mid-run). Always on a new connection, after
        a short ping: a daemon that blipped during the run (client dropped) still gets asked."""
        self.drop_client()
        self._down = None  # what an earlier ping said is stale now
        try:
            client = self.connect()
        except ExecutorError:  # no daemon at the end: nothing we can remove
            return
        try:
            try:
                self.sweep_orphans()
            except Exception:  # noqa: BLE001 - still remove our own below
                pass
            try:
                for c in ours(client, f"{LABEL_RUN_ID}={run_id}"):
                    if (c.get("Labels") or {}).get(LABEL_KEEP_ALIVE) != "1":
                        remove(client, c["Id"])
            except Exception:  # noqa: BLE001 - the daemon went away again: the next sweep removes them
                pass
        finally:
            self.drop_client()


