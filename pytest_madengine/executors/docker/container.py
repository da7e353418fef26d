"""Running a model's container, once its image is there.

The container is created with madengine's conventions (workspace at ``/myworkspace``, the run
folder reached through it as working dir, host network and IPC, root, SYS_PTRACE, no seccomp,
GPU devices); we attach to its output before starting it and stream that line by line into
the sink; it is waited for in short slices against the deadline and the Cancel flag, and
removed on every path unless ``--mad-keep-alive``.

Attached, not ``docker logs --follow``: the attach stream carries every byte from the first
one (no late reader misses the start of a fast model) and never reads dockerd's log file, so
that file can be kept small (the plan's bounded ``log_config``). ``logs --follow`` on a file
that rotates loses and repeats output (Docker 20.10, json-file: of a 1 GiB line 0.86 GiB came
through and the line after it twice).
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from pytest_madengine import process
from pytest_madengine.executors import secretenv
from pytest_madengine.executors.base import Cancel, RunOutcome, RunSpec
from pytest_madengine.executors.docker.daemon import (
    SLICE_S,
    Daemon,
    api_message,
    daemon_error,
    docker_host,
    is_connection_error,
    remove,
    short_reason,
)
from pytest_madengine.executors.docker.plan import EXIT_CODE_FILE, KEEP_ALIVE_MARK, ContainerPlan
from pytest_madengine.output import LineFeed, OutputSink

LOG_DRAIN_S = 10
MAX_NAME_TRIES = 50


class ContainerWatch:
    """The two threads around a running container: one copies its output into the sink line by
    line, one blocks in ``wait`` (none with keep-alive, whose container never exits)."""

    def __init__(self, client: Any, cid: str, sink: OutputSink, *, keep_alive: bool, output: Iterable[bytes],
                 sock: Any = None) -> None:
        self.client, self.cid, self.sink, self.keep_alive = client, cid, sink, keep_alive
        self.output, self.sock = output, sock
        self.stop = threading.Event()
        self.marker_seen = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True, name="mad-docker-logs")
        self.reader.start()
        self.waiter: threading.Thread | None = None
        self.waited: dict[str, Any] = {}
        if not keep_alive:
            self.start_waiter()

    def _emit(self, line: str) -> None:
        if self.stop.is_set():
            return
        if self.keep_alive and line.startswith(KEEP_ALIVE_MARK):
            self.marker_seen.set()
        self.sink.write(line)

    def _read(self) -> None:
        feed = LineFeed(self.sink, self._emit)
        try:
            for chunk in self.output:
                if self.stop.is_set():
                    break
                feed.feed(chunk)
            feed.end()
        except Exception:  # noqa: BLE001 - a lost daemon is reported by the waiter / main loop
            pass

    def start_waiter(self) -> None:
        self.waited = {}
        waited = self.waited

        def wait() -> None:
            try:
                waited["result"] = self.client.api.wait(self.cid, timeout=None)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                waited["exception"] = exc

        self.waiter = threading.Thread(target=wait, daemon=True, name="mad-docker-wait")
        self.waiter.start()

    def wait_slice(self, seconds: float) -> dict[str, Any] | None:
        assert self.waiter is not None
        self.waiter.join(seconds)
        return None if self.waiter.is_alive() else self.waited

    def finish(self, drain_s: float) -> None:
        self.reader.join(drain_s)
        self.stop.set()
        if self.sock is not None:
            raw = getattr(self.sock, "_sock", self.sock)
            try:
                raw.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked on a container that lives on
            except Exception:  # noqa: BLE001
                pass
            try:
                self.sock.close()
            except Exception:  # noqa: BLE001
                pass


def run_container(daemon: Daemon, client: Any, spec: RunSpec, plan: ContainerPlan, sink: OutputSink,
                  cancel: Cancel, say: Callable[[str, OutputSink | None], None]) -> RunOutcome:
    """The container of ``plan``, with its secret environment file (``secretenv``) written just
    before it is created and removed when it is over, on every path (the container deletes it
    once read; this covers a container that never started or never got that far)."""
    env_file = spec.run_dir / secretenv.ENV_FILE
    try:
        if plan.secret_env:
            try:
                secretenv.write(env_file, plan.secret_env)
            except (OSError, ValueError) as exc:
                return RunOutcome(None, 0.0, problem=f"cannot write the secret environment file {env_file}: "
                                                     f"{getattr(exc, 'strerror', None) or exc}")
        return _run_container(daemon, client, spec, plan, sink, cancel, say)
    finally:
        secretenv.remove(env_file)


def _run_container(daemon: Daemon, client: Any, spec: RunSpec, plan: ContainerPlan, sink: OutputSink,
                   cancel: Cancel, say: Callable[[str, OutputSink | None], None]) -> RunOutcome:
    from docker.errors import APIError

    exit_file = spec.run_dir / EXIT_CODE_FILE
    if plan.keep_alive:
        exit_file.unlink(missing_ok=True)
    sink.note(f"container {plan.name}: image {plan.image}, command {plan.command}, cwd {plan.working_dir}")
    start = time.monotonic()
    base_name = plan.name
    while True:
        try:
            container = client.containers.create(**plan.run_kwargs())
            break
        except APIError as exc:
            if _name_taken(exc) and plan.name.rpartition("_")[2] != str(MAX_NAME_TRIES):
                # madengine's name is held by a live container (another checkout, a kept one):
                # never remove it; take the next free suffix and say so.
                tries = 1 if plan.name == base_name else int(plan.name.rpartition("_")[2])
                taken = plan.name
                plan = dataclasses.replace(plan, name=f"{base_name}_{tries + 1}")
                sink.note(f"container name {taken} is held by another container; using {plan.name}")
                continue
            if not _name_taken(exc):
                remove(client, plan.name)
            return RunOutcome(None, 0.0, problem=f"cannot start container {plan.name}: {api_message(exc)}")
        except Exception as exc:  # noqa: BLE001
            if is_connection_error(exc):
                daemon.drop_client()
                return RunOutcome(None, 0.0, problem=str(daemon_error(exc)))
            raise
    cid = container.id
    try:
        sock, output = attach(client, cid, tty=bool(plan.run_kwargs().get("tty")))
        client.api.start(cid)
    except APIError as exc:
        remove(client, cid)
        return RunOutcome(None, 0.0, problem=f"cannot start container {plan.name}: {api_message(exc)}")
    except Exception as exc:  # noqa: BLE001
        if is_connection_error(exc):
            daemon.drop_client()
            remove(client, cid)
            return RunOutcome(None, 0.0, problem=str(daemon_error(exc)))
        remove(client, cid)
        raise
    # The duration counts from creating the container; the timeout from its start.
    until = process.Deadline(spec.timeout)
    watch = ContainerWatch(client, cid, sink, keep_alive=plan.keep_alive, output=output, sock=sock)
    timed_out = interrupted = False
    exit_code: int | None = None
    problem = ""
    file_seen_at: float | None = None
    restarts = 0
    while True:
        if not plan.keep_alive:
            done = watch.wait_slice(SLICE_S)
            if done is not None:
                if "result" in done:
                    exit_code = done["result"].get("StatusCode")
                    break
                failure = done["exception"]
                if isinstance(failure, APIError):
                    problem = f"lost container {plan.name}: {api_message(failure)}"
                    break
                # The wait connection broke: a dead daemon, or only the connection?
                down = daemon.ping_fresh()
                if down is None and restarts < 3:
                    restarts += 1
                    watch.start_waiter()
                    continue
                problem = f"Docker daemon at {docker_host()} is not answering: {down or short_reason(failure)}"
                break
        else:
            time.sleep(SLICE_S)
            if exit_file.exists():
                file_seen_at = file_seen_at or time.monotonic()
                if watch.marker_seen.is_set() or time.monotonic() - file_seen_at > 2.0:
                    try:
                        exit_code = int(exit_file.read_text().strip())
                    except (OSError, ValueError):
                        exit_code = None
                    break
            elif not watch.reader.is_alive():
                # The log stream ended before the wrapper wrote the code: the container
                # stopped (or the daemon went away).
                state = _state(client, cid)
                if state is None:
                    problem = f"Docker daemon at {docker_host()} is not answering: {daemon.ping_fresh() or 'lost the container'}"
                    break
                if not state.get("Running"):
                    exit_code = state.get("ExitCode")
                    break
        why = process.stop_reason(cancel, until)
        if why is not None:
            interrupted, timed_out = why == process.CANCELLED, why == process.TIMED_OUT
            break
    duration = time.monotonic() - start
    daemon_gone = problem.startswith("Docker daemon")
    if daemon_gone:
        daemon.drop_client()
    oom = False
    if not (timed_out or interrupted or daemon_gone):
        state = _state(client, cid) or {}
        oom = bool(state.get("OOMKilled"))
    if timed_out or interrupted:
        remove(client, cid)  # stops the log stream too
    # Let the reader drain what the container wrote before it ended (bounded).
    watch.finish(LOG_DRAIN_S if not (timed_out or interrupted or plan.keep_alive or daemon_gone) else 1.0)
    if oom:
        problem = "OOM-killed (the container hit its memory limit)"
    props: dict[str, Any] = {"container": plan.name}
    if plan.keep_alive and not (timed_out or interrupted or problem):
        say(f"container {plan.name} kept alive; enter it with: docker exec -it {plan.name} bash", sink)
        props["keep_alive"] = f"docker exec -it {plan.name} bash"
    elif not (timed_out or interrupted or daemon_gone):
        remove(client, cid)
    return RunOutcome(exit_code, duration, timed_out=timed_out, interrupted=interrupted, problem=problem,
                      properties=props)


def attach(client: Any, cid: str, *, tty: bool) -> tuple[Any, Iterable[bytes]]:
    """(socket, its chunks of output) of a container attached to before its start, as ``docker
    run`` does. The socket never times out: a model may be silent for hours."""
    from docker.utils.socket import frames_iter

    sock = client.api.attach_socket(cid, params={"stdout": 1, "stderr": 1, "stream": 1, "logs": 0})
    for s in (sock, getattr(sock, "_sock", None)):  # a SocketIO wraps the socket that holds the timeout
        if s is not None and hasattr(s, "settimeout"):
            s.settimeout(None)
    frames: Iterable[tuple[int, bytes]] = frames_iter(sock, tty)  # type: ignore[no-untyped-call]
    return sock, (data for _, data in frames)


def _state(client: Any, cid: str) -> dict[str, Any] | None:
    try:
        return client.api.inspect_container(cid).get("State") or {}
    except Exception:  # noqa: BLE001
        return None


def _name_taken(exc: BaseException) -> bool:
    """A create refused because another container has the name (HTTP 409)."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status == 409 and "already in use" in api_message(exc)


