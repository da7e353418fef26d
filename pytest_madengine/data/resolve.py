"""Serve a model's datanames before it runs: for each name, the providers of its entry in
madengine's order; the first that passes its check and whose commands succeed serves it.
A name no provider serves raises DataError naming every provider tried and why (madengine
runs the model without its data, a result that means nothing)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pytest_madengine import process
from pytest_madengine.data import custom, local, nas, s3
from pytest_madengine.data.config import DataConfig, DataError, Source
from pytest_madengine.data.credentials import Credentials, scrub
from pytest_madengine.data.plan import Fetch, Unusable

PROBE_TIMEOUT_S = 10.0
Note = Callable[[str], None]


def tcp_probe(host: str, port: int) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"does not answer ({exc.strerror or exc})"


def http_probe(url: str) -> str | None:
    """Any HTTP answer counts (an S3 endpoint answers 403 to an anonymous GET)."""
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S):  # noqa: S310 - the user's endpoint
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"does not answer ({getattr(exc, 'reason', exc)})"


@dataclass(frozen=True)
class Probes:
    tcp: Callable[[str, int], str | None] = tcp_probe
    http: Callable[[str], str | None] = http_probe
    which: Callable[[str], str | None] = shutil.which


@dataclass(frozen=True)
class Served:
    fetch: Fetch
    duration: float | None = None  # seconds the commands took; None when nothing was fetched
    size: str = ""  # du -sh of the folder, madengine's form


@dataclass(frozen=True)
class DataResult:
    served: tuple[Served, ...] = ()
    tried: tuple[str, ...] = field(default_factory=tuple)  # providers that could not serve, and why

    def env(self, in_container: bool) -> dict[str, str]:
        """MAD_DATAHOME (comma-joined for several names): the container path in a container,
        else the host folder."""
        if not self.served:
            return {}
        homes = [s.fetch.home if in_container else str(s.fetch.host_dir) for s in self.served]
        return {"MAD_DATAHOME": ",".join(homes)}

    def mounts(self) -> tuple[tuple[str, str, bool], ...]:
        """(host folder, container path, read-only) for each name."""
        return tuple((str(s.fetch.host_dir), s.fetch.home, s.fetch.readonly) for s in self.served)

    def perf(self) -> dict[str, str]:
        """perf.csv's data columns (several names: comma-joined, durations summed)."""
        durations = [s.duration for s in self.served if s.duration is not None]
        return {
            "data_provider_type": ",".join(s.fetch.source.provider for s in self.served),
            "data_size": ",".join(s.size for s in self.served if s.size),
            "data_download_duration": f"{sum(durations):.2f}" if durations else "",
        }

    def describe(self) -> str:
        return "; ".join(f"'{s.fetch.source.dataname}' from {s.fetch.source.provider} at {s.fetch.home}"
                         for s in self.served)


def plan_source(source: Source, index: int, creds: Credentials, root: Path, scratch: Path,
                probes: Probes, known_hosts: Path) -> Fetch:
    """This provider's plan for this name, after its checks; Unusable with the reason."""
    if source.provider == "local":
        return local.plan(source, index, root)
    if source.provider == "custom":
        return custom.plan(source, index, root, scratch)
    if source.provider == "nas":
        return nas.plan(source, index, creds, scratch, known_hosts, probes.tcp, probes.which)
    return s3.plan(source, index, creds, scratch, probes.http, probes.which)


def describe(names: Sequence[str], config: DataConfig) -> list[str]:
    """The dry run's lines: which providers would be tried, in order; nothing is probed."""
    out = []
    for name in names:
        order = ", ".join(f"{s.provider} ({s.path}" + (f", mirror {s.mirrorlocal}" if s.mirrorlocal else "") + ")"
                          for s in config.sources(name))
        out.append(f"data '{name}': the first of {order} that serves it (not fetched in a dry run)")
    return out


def size_of(folder: Path) -> str:
    try:
        done = subprocess.run(["du", "-sh", str(folder)], capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.split("\t", 1)[0].strip() if done.returncode == 0 else ""


def _is_empty(folder: Path) -> bool:
    try:
        return not any(folder.iterdir())
    except OSError:
        return True


class Interrupted(DataError):
    """Ctrl-C or SIGTERM while data was being served."""


def execute(fetch: Fetch, note: Note, secrets: tuple[str, ...], cancel: Callable[[], bool] = lambda: False) -> Served:
    """Run the plan's commands; Unusable with the reason (output scrubbed of secrets)."""
    if not fetch.steps:
        return Served(fetch)
    if fetch.transient and not fetch.mounted:  # a copy left by a killed run is never read as this run's
        shutil.rmtree(fetch.host_dir, ignore_errors=True)
    fetch.host_dir.mkdir(parents=True, exist_ok=True)
    secrets = (*secrets, *(v for v in fetch.secret_env.values() if v))
    env = {**os.environ, **fetch.env, **fetch.secret_env}
    start = time.monotonic()
    for i, step in enumerate(fetch.steps):
        if step.only_if_empty and not _is_empty(fetch.host_dir):
            continue
        note(f"data: $ {step.render()}")
        # Output to a file, not a pipe: sshfs leaves its ssh child running (holding a pipe open).
        with tempfile.TemporaryFile() as out:
            feed = i == 0 and bool(fetch.stdin)
            try:  # its own process group: a timeout or Ctrl-C stops its children too
                proc = subprocess.Popen(list(step.argv), cwd=step.cwd or None, env=env, stdout=out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.PIPE if feed else subprocess.DEVNULL,
                                        start_new_session=True)
            except OSError as exc:
                raise Unusable(f"cannot start {step.argv[0]}: {exc.strerror or exc}") from None
            if feed and proc.stdin is not None:
                try:
                    proc.stdin.write(fetch.stdin.encode())
                    proc.stdin.close()
                except OSError:
                    pass
            why = process.wait(proc, cancel, process.Deadline(step.timeout))
            if why is not None:  # a finished sshfs leaves its daemon in the group: only killed here
                process.kill_group(proc.pid, leader=proc)
                proc.wait()
                if why == process.CANCELLED:
                    raise Interrupted(f"interrupted while {step.argv[0]} ran")
                raise Unusable(f"{step.argv[0]} did not finish in {step.timeout:g} s")
            out.seek(0)
            output = scrub(out.read().decode(errors="replace"), secrets)
            done = proc
        for line in output.splitlines()[-200:]:
            note(f"data: {line}")
        if done.returncode != 0:
            lines = [ln.strip() for ln in output.splitlines() if ln.strip() and not ln.startswith("Warning:")]
            # the first line saying what went wrong (rsync ends with a less telling "broken pipe")
            last = next((ln for ln in lines if any(w in ln.lower() for w in ("denied", "failed", "no such",
                                                                              "error"))), lines[-1] if lines else "")
            raise Unusable(f"{step.argv[0]} exited {done.returncode}" + (f": {last[:300]}" if last else ""))
    duration = time.monotonic() - start
    if fetch.source.provider in ("minio", "aws", "nas") and not fetch.mounted and _is_empty(fetch.host_dir):
        raise Unusable(f"{fetch.source.path} holds nothing: no file was copied")
    return Served(fetch, duration=duration, size=size_of(fetch.host_dir) if fetch.sized else "")


def release(fetch: Fetch, note: Note) -> None:
    """Undo what serving left that belongs to this run only: an sshfs mount, a run-folder copy."""
    if fetch.mounted:
        done = subprocess.run(["fusermount", "-u", str(fetch.host_dir)], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            subprocess.run(["fusermount", "-uz", str(fetch.host_dir)], capture_output=True, check=False)
            note(f"data: unmount of {fetch.host_dir}: {done.stderr.strip()}")
    if fetch.transient:
        shutil.rmtree(fetch.host_dir, ignore_errors=True)


def serve(names: Sequence[str], config: DataConfig, creds: Credentials, *, root: Path, scratch: Path,
          known_hosts: Path, note: Note, probes: Probes | None = None,
          cancel: Callable[[], bool] = lambda: False) -> DataResult:
    """Serve every name (in order) or raise DataError; on failure what was served is released."""
    probes = probes or Probes()
    served: list[Served] = []
    tried_all: list[str] = []
    try:
        for index, name in enumerate(names):
            sources = config.sources(name)
            tried: list[str] = []
            for source in sources:
                if cancel():
                    raise Interrupted(f"dataname '{name}': interrupted (Ctrl-C or SIGTERM) before it was served")
                note(f"data '{name}': trying {source.provider}")
                fetch = None
                try:
                    fetch = plan_source(source, index, creds, root, scratch, probes, known_hosts)
                    note(fetch.render())
                    served.append(execute(fetch, note, creds.secrets(), cancel))
                    note(f"data '{name}': served by {source.provider}")
                    break
                except Interrupted:
                    if fetch is not None:
                        release(fetch, note)
                    raise
                except Unusable as exc:
                    why = scrub(str(exc), creds.secrets())
                    tried.append(f"{source.provider}: {why}")
                    note(f"data '{name}': {source.provider} cannot serve it: {why}")
                    if fetch is not None:
                        release(fetch, note)
            else:
                raise DataError(f"dataname '{name}': no provider can serve it (tried in madengine's order: "
                                + "; ".join(tried) + ")")
            tried_all += [f"{name} {t}" for t in tried]
    except BaseException:
        for s in served:
            release(s.fetch, note)
        raise
    return DataResult(served=tuple(served), tried=tuple(tried_all))


def release_all(result: DataResult, note: Note) -> None:
    for s in result.served:
        release(s.fetch, note)
