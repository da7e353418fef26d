"""The image a model runs in: found, built or pulled before its container starts.

1. image: reuse ``ci-<model>_<dockerfile stem>`` when its ``org.pytest-madengine.build-hash``
   label equals the hash of this build's inputs (Dockerfile, build-context files, build args),
   else build it. Builds of one image are serialised across processes (xdist workers) with an
   ``fcntl`` lock under ``<work_dir>/.build-locks``; a failed build is remembered so that other
   models of the same image fail at once with the same reason.
2. base image: a ``BASE_DOCKER`` that is not present locally is pulled first, after a
   ``client.login`` with credentials from ``credential.json`` / ``MAD_DOCKERHUB_*``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_madengine import process
from pytest_madengine.errors import ExecutorError
from pytest_madengine.executors.base import Cancel, RunSpec
from pytest_madengine.executors.docker import buildsecrets, publish, registry
from pytest_madengine.executors.docker.daemon import SLICE_S, api_message, refused_for_credentials, spec_cred_hint
from pytest_madengine.executors.docker.manifest import RegistryTarget
from pytest_madengine.executors.docker.plan import LABEL, LABEL_BUILD_SESSION, LABEL_HASH, BuildPlan, build_timeout
from pytest_madengine.output import OutputSink

HASH_SCHEMA = "pytest-madengine build inputs v1"
DOCKERFILE_IN_TAR = ".pytest-madengine.Dockerfile"
BUILD_TAIL_LINES = 15


@dataclass(frozen=True)
class ContextFiles:
    root: Path
    files: tuple[str, ...]  # relative paths (files and folders) sent to the daemon, sorted
    digest: str  # sha256 over paths, kinds and contents


def context_files(root: Path, excludes: Iterable[str] = ()) -> ContextFiles:
    """The build context exactly as it is sent: ``.dockerignore`` applied (Docker SDK rules),
    plus ``excludes`` (our own log and work folders when they lie inside the context)."""
    from docker.utils.build import exclude_paths

    patterns: list[str] = []
    ignore = root / ".dockerignore"
    if ignore.is_file():
        patterns = [ln.strip() for ln in ignore.read_text(encoding="utf-8", errors="replace").splitlines()
                    if ln.strip() and not ln.strip().startswith("#")]
    patterns += list(excludes)
    files = tuple(sorted(exclude_paths(str(root), patterns, dockerfile=DOCKERFILE_IN_TAR)))
    h = hashlib.sha256()
    for rel in files:
        full = root / rel
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
        if full.is_symlink():
            h.update(b"L" + os.readlink(full).encode("utf-8", "surrogateescape"))
        elif full.is_file():
            h.update(b"F" + (b"x" if os.access(full, os.X_OK) else b"-"))
            with open(full, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        else:
            h.update(b"D")
        h.update(b"\0")
    return ContextFiles(root, files, h.hexdigest())


def build_hash(dockerfile_text: str, context_digest: str, build_args: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    h.update(HASH_SCHEMA.encode() + b"\0")
    h.update(dockerfile_text.encode("utf-8", "surrogateescape") + b"\0")
    h.update(context_digest.encode() + b"\0")
    h.update(json.dumps(dict(sorted(build_args.items())), sort_keys=True).encode())
    return h.hexdigest()


class BuildLog:
    """The build log file plus a bounded tail of it, for failure reasons."""

    def __init__(self, path: Path, secrets: Iterable[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.secrets = set(secrets)
        self._fh = open(path, "w", encoding="utf-8", errors="replace")
        from collections import deque

        self.tail: Any = deque(maxlen=BUILD_TAIL_LINES)

    def write(self, text: str) -> None:
        text = registry.redact(text, self.secrets)
        for line in text.splitlines():
            if line.strip():
                self._fh.write(line + "\n")
                self.tail.append(line)
        self._fh.flush()

    def note(self, text: str) -> None:
        self.write(f"[pytest-madengine] {text}")

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


class BuildFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Interrupted(Exception):
    pass


class StreamTimedOut(Exception):
    """A build or pull stream outlived its deadline (the daemon may still be working on it)."""


@dataclass
class ImageResult:
    image: str
    image_id: str
    built: bool
    build_duration: float
    build_hash: str = ""  # of the build inputs ("" for an image given as is)


def in_thread(fn: Callable[[], None], cancel: Cancel, deadline: float | None = None,
              stop: threading.Event | None = None) -> None:
    """Run ``fn`` in a thread; return when it ends, raise Interrupted on cancel and
    StreamTimedOut past ``deadline`` (time.monotonic()). The SDK's streams have no timeout
    of their own, so the thread is left to end with the stream (or with pytest); ``stop``
    is set to tell it to stop reporting."""
    t = threading.Thread(target=fn, daemon=True, name="mad-docker-stream")
    t.start()
    until = process.Deadline(None if deadline is None else deadline - time.monotonic())
    while t.is_alive():
        t.join(until.slice(SLICE_S))
        if not t.is_alive():
            break
        why = process.stop_reason(cancel, until)
        if why is not None:
            if stop is not None:
                stop.set()
            if why == process.CANCELLED:
                raise Interrupted()
            raise StreamTimedOut()


def _image_labels(client: Any, image: str) -> tuple[str, dict[str, str]] | None:
    from docker.errors import ImageNotFound

    try:
        attrs = client.api.inspect_image(image)
    except ImageNotFound:
        return None
    return attrs.get("Id", ""), (attrs.get("Config") or {}).get("Labels") or {}


def _drop_replaced(client: Any, image_id: str, log: BuildLog | None) -> None:
    """Remove the image this build replaced when it is ours and nothing names it any more."""
    try:
        attrs = client.api.inspect_image(image_id)
        if attrs.get("RepoTags") or LABEL_HASH not in ((attrs.get("Config") or {}).get("Labels") or {}):
            return
        client.api.remove_image(image_id)
        if log is not None:
            log.note(f"removed the image it replaces ({image_id[:19]})")
    except Exception:  # noqa: BLE001 - still used by a container, or already gone: keep it
        pass


def _build_reason(build: BuildPlan, error: str, log: BuildLog) -> str:
    lines = list(log.tail)[-10:]
    text = f"docker build of {build.image} failed: {' '.join(error.split())[:300]}"
    text += f"\nlast lines of {log.path}:\n" + "\n".join(f"  {ln}" for ln in lines)
    return registry.redact(text, log.secrets)


def _secrets(spec: RunSpec) -> tuple[dict[str, Any], set[str]]:
    entries, _ = registry.load_credentials(spec.workspace)
    return entries, registry.secrets_of(entries)


class ImageBuilder:
    """Finds, builds and pulls the images of one executor, and remembers what it learnt: failed
    builds (by build hash) and the build contexts it has hashed."""

    def __init__(self, options: Any, run_id: str, lock: threading.RLock,
                 say: Callable[[str, OutputSink | None], None]) -> None:
        self.options = options
        # xdist workers of one run share PYTEST_XDIST_TESTRUNUID; with --mad-rebuild an image
        # built by a sibling worker after we started counts as rebuilt (the time check keeps a
        # pytest started inside an xdist worker, which inherits the variable, from matching).
        self.build_session = os.environ.get("PYTEST_XDIST_TESTRUNUID") or run_id
        self.started = time.time()
        self._lock = lock  # the executor's, shared with its daemon client (see DockerExecutor)
        self._say = say
        self._failed: dict[str, tuple[str, str]] = {}  # build hash -> (reason, model): same inputs fail alike
        self._context_cache: dict[tuple[str, tuple[str, ...]], ContextFiles] = {}
        self._digest_locks: dict[str, threading.Lock] = {}  # one build per set of inputs at a time, in process
        # A run with --mad-registry (not the build phase, which pushes itself): an image missing
        # here is pulled by its content name before anything is built, and one built is pushed.
        reg = getattr(options, "registry", "") or ""
        self.registry = (RegistryTarget.parse(reg) if reg and not getattr(options, "build_only", False)
                         and not options.rebuild else None)

    def _excludes(self, root: Path) -> list[str]:
        # Never sent to the daemon: registry passwords (a COPY . would put them in a layer) and
        # version-control data, wherever the context starts.
        out = [registry.CREDENTIAL_FILE, ".git"]
        workspace = Path(self.options.root).resolve()
        for p in (Path(self.options.log_dir), Path(self.options.work_dir), workspace / registry.CREDENTIAL_FILE):
            try:
                rel = p.resolve().relative_to(root)
            except ValueError:
                continue
            if str(rel) not in ("", ".", *out):
                out.append(str(rel))
        if root == workspace:
            out.append("perf.csv")  # written by every run: would rebuild every time
        return out

    def _context(self, root: Path) -> ContextFiles:
        excludes = tuple(self._excludes(root))
        key = (str(root), excludes)
        with self._lock:
            if key not in self._context_cache:
                self._context_cache[key] = context_files(root, excludes)
            return self._context_cache[key]

    @contextmanager
    def _build_lock(self, digest: str) -> Iterator[None]:
        folder = Path(self.options.work_dir) / ".build-locks"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{digest[:32]}.lock"
        # Per inputs, not the executor's lock: the build phase builds distinct images in parallel.
        with self._lock:
            mine = self._digest_locks.setdefault(digest, threading.Lock())
        with mine, open(path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _acceptable(self, labels: Mapping[str, str], digest: str) -> bool:
        if labels.get(LABEL_HASH) != digest:
            return False
        # --mad-rebuild: only an image built by this very run (any of its xdist workers) counts
        if not self.options.rebuild:
            return True
        session, _, when = labels.get(LABEL_BUILD_SESSION, "").partition("@")
        try:
            built_at = float(when)
        except ValueError:
            return False
        return session == self.build_session and built_at >= self.started

    def _reusable(self, client: Any, image: str, digest: str) -> tuple[str, str] | None:
        """(image id, how) of an image this build may reuse: the tag itself, or any image with
        the same build hash (models sharing a Dockerfile), which is then tagged ``image``."""
        found = _image_labels(client, image)
        if found is not None and self._acceptable(found[1], digest):
            return found[0], f"image {image} is up to date (build hash {digest[:16]})"
        for other in client.api.images(filters={"label": f"{LABEL_HASH}={digest}"}):
            if self._acceptable(other.get("Labels") or {}, digest):
                client.api.tag(other["Id"], image, tag="latest", force=True)
                if found is not None:
                    _drop_replaced(client, found[0], None)
                source = next((t for t in other.get("RepoTags") or [] if t != "<none>:<none>"), other["Id"][:19])
                return other["Id"], f"tagged {source} as {image}: same build inputs (build hash {digest[:16]})"
        return None

    def _fail_fast(self, digest: str) -> None:
        if digest in self._failed:
            reason, first = self._failed[digest]
            raise BuildFailed(f"{reason}\n(the same build inputs failed earlier in this session, "
                              f"for model '{first}': not retried)")

    def ensure_image(self, client: Any, spec: RunSpec, build: BuildPlan, log_path: Path,
                     sink: OutputSink, cancel: Cancel) -> ImageResult:
        if build.prebuilt:
            return self._ensure_prebuilt(client, spec, build, log_path, sink, cancel)
        text = Path(build.dockerfile).read_text(encoding="utf-8", errors="replace")
        root = Path(build.context_dir)
        if not root.is_dir():
            raise ExecutorError(f"model '{spec.model.name}': build context {root} is not a folder "
                                "(models.json field 'dockercontext', or ./docker of the workspace)")
        ctx_files = self._context(root)
        digest = build_hash(text, ctx_files.digest, build.build_args)
        self._fail_fast(digest)
        reuse = self._reusable(client, build.image, digest)
        if reuse is None:
            # One build per set of inputs at a time, across xdist workers; the loser reuses.
            with self._build_lock(digest):
                self._fail_fast(digest)
                reuse = self._reusable(client, build.image, digest)
                if reuse is None and self.registry is not None:
                    reuse = self._from_registry(client, spec, build, digest, log_path, sink, cancel)
                if reuse is None:
                    try:
                        built = self._build(client, spec, build, text, ctx_files, digest, log_path, sink, cancel)
                        if self.registry is not None:
                            self._push(client, spec, build, built, sink)
                        return built
                    except BuildFailed as exc:
                        self._failed[digest] = (exc.reason, spec.model.name)
                        raise
        image_id, how = reuse
        log = BuildLog(log_path, ())
        try:
            log.note(f"{how}: no build")
        finally:
            log.close()
        sink.note(f"image {build.image}: reused ({image_id[:19]}), no build")
        return ImageResult(build.image, image_id, False, 0.0, digest)

    def _from_registry(self, client: Any, spec: RunSpec, build: BuildPlan, digest: str, log_path: Path,
                       sink: OutputSink, cancel: Cancel) -> tuple[str, str] | None:
        """Pull the image of these inputs from --mad-registry (built by another host or node);
        None when the registry does not have it."""
        assert self.registry is not None
        ref = self.registry.reference(build.image, digest)
        entries, secrets = _secrets(spec)
        log = BuildLog(log_path, secrets)
        try:
            self._pull(client, ref, entries, secrets, log, sink, cancel, what="image",
                       deadline=time.monotonic() + build_timeout(spec))
        except (BuildFailed, StreamTimedOut) as exc:
            sink.note(f"{ref}: not pulled ({getattr(exc, 'reason', 'timed out')[:200]}): building it here")
            return None
        finally:
            log.close()
        client.api.tag(ref, build.image, tag="latest", force=True)
        found = _image_labels(client, build.image)
        if found is None or found[1].get(LABEL_HASH) != digest:
            return None
        sink.note(f"image {build.image}: pulled {ref} (same build inputs, built elsewhere), no build")
        return found[0], f"pulled {ref} from --mad-registry (build hash {digest[:16]})"

    def _push(self, client: Any, spec: RunSpec, build: BuildPlan, built: ImageResult, sink: OutputSink) -> None:
        assert self.registry is not None
        entries, secrets = _secrets(spec)
        try:
            publish.push(client, built.image_id, self.registry, build.image, built.build_hash, entries, secrets,
                         lambda text: self._say(text, sink))
        except publish.PushFailed as exc:
            raise BuildFailed(exc.reason) from None

    def _build(self, client: Any, spec: RunSpec, build: BuildPlan, text: str, ctx_files: ContextFiles,
               digest: str, log_path: Path, sink: OutputSink, cancel: Cancel) -> ImageResult:
        from docker.errors import APIError
        from docker.utils.build import create_archive

        entries, secrets = _secrets(spec)
        limit = build_timeout(spec)
        log = BuildLog(log_path, secrets)
        start = time.monotonic()
        deadline = start + limit
        stop = threading.Event()
        try:
            why = "--mad-rebuild" if self.options.rebuild else "inputs changed or no image yet"
            log.note(f"building {build.image} from {build.dockerfile} (context {build.context_dir}, "
                     f"build hash {digest[:16]}, {why})")
            self._say(f"{spec.model.name}: building image {build.image} ({why}); log {log_path}", sink)
            if build.base_docker and "$" not in build.base_docker:
                self._ensure_base(client, spec, build, entries, secrets, log, sink, cancel, deadline)
            # The legacy builder turns each label into a step of its own: two, no more.
            labels = {LABEL_HASH: digest, LABEL_BUILD_SESSION: f"{self.build_session}@{time.time():.3f}"}
            previous = _image_labels(client, build.image)
            tar = create_archive(str(ctx_files.root), files=list(ctx_files.files),
                                 extra_files=[(DOCKERFILE_IN_TAR, text)])
            result: dict[str, Any] = {}
            given = buildsecrets.build_secrets(os.environ, str(spec.model.raw.get("cred") or ""), entries)
            log.secrets.update(v for v in given.values() if len(v) >= 4)
            for name in buildsecrets.withheld(text, given):
                log.note(f"ARG {name}: not passed as a build arg (it would be kept in the image's history); "
                         f"read it from ${buildsecrets.URL_ARG}/{name} instead (README, build secrets)")
            build_args = dict(build.build_args)
            serve = buildsecrets.wants_endpoint(text)

            def consume() -> None:
                try:
                    stream = client.api.build(
                        fileobj=tar, custom_context=True, dockerfile=DOCKERFILE_IN_TAR, tag=build.image,
                        buildargs=build_args, labels=labels, rm=True, forcerm=True, pull=False,
                        nocache=bool(self.options.rebuild), decode=True, network_mode="host",
                    )
                    for chunk in stream:
                        if stop.is_set():  # timed out or cancelled: nobody reads this any more
                            break
                        if "stream" in chunk:
                            out = str(chunk["stream"])
                            log.write(out)
                            for line in out.splitlines():
                                if re.match(r"^Step \d+/\d+ :", line) and f"LABEL {LABEL}." not in line:
                                    self._say(f"{build.image}: {registry.redact(line, secrets)[:200]}", None)
                        elif "error" in chunk:
                            result["error"] = str((chunk.get("errorDetail") or {}).get("message") or chunk["error"])
                            log.write(result["error"])
                        elif "aux" in chunk and isinstance(chunk["aux"], dict) and chunk["aux"].get("ID"):
                            result["id"] = chunk["aux"]["ID"]
                        elif "status" in chunk:
                            log.write(str(chunk["status"]))
                except APIError as exc:
                    result["error"] = api_message(exc)
                    log.write(result["error"])
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                    result["exception"] = exc
                finally:
                    tar.close()

            if serve:
                with buildsecrets.endpoint(given) as url:
                    build_args[buildsecrets.URL_ARG] = url
                    log.note(f"build secrets ({', '.join(sorted(given)) or 'none'}) served for this build only at "
                             f"${buildsecrets.URL_ARG}")
                    in_thread(consume, cancel, deadline, stop)
            else:
                in_thread(consume, cancel, deadline, stop)
            if "exception" in result:
                raise result["exception"]
            if "error" in result:
                raise BuildFailed(_build_reason(build, result["error"], log))
            found = _image_labels(client, build.image)
            if found is None or found[1].get(LABEL_HASH) != digest:
                raise BuildFailed(_build_reason(build, "the build ended but produced no tagged image", log))
            duration = time.monotonic() - start
            if previous is not None and previous[0] != found[0]:
                _drop_replaced(client, previous[0], log)
            log.note(f"built {build.image} ({found[0][:19]}) in {duration:.1f} s")
            sink.note(f"image {build.image}: built in {duration:.1f} s ({found[0][:19]}); build log {log_path}")
            return ImageResult(build.image, found[0], True, duration, digest)
        except StreamTimedOut:
            log.note(f"timed out after {limit:g} s (context key docker_build_timeout): stopped waiting; "
                     "the build may go on in the Docker daemon, orphaned, until it ends")
            raise BuildFailed(f"image build timed out after {limit:g} s ({build.image}; context key "
                              f"docker_build_timeout); build log {log_path}") from None
        finally:
            stop.set()
            log.close()

    def _ensure_base(self, client: Any, spec: RunSpec, build: BuildPlan, entries: Mapping[str, Any],
                     secrets: set[str], log: BuildLog, sink: OutputSink, cancel: Cancel,
                     deadline: float | None = None) -> None:
        if _image_labels(client, build.base_docker) is not None:
            log.note(f"base image {build.base_docker} is present locally")
            return
        self._pull(client, build.base_docker, entries, secrets, log, sink, cancel, what="base image",
                   deadline=deadline)

    def _pull(self, client: Any, ref: str, entries: Mapping[str, Any], secrets: set[str], log: BuildLog,
              sink: OutputSink, cancel: Cancel, what: str, deadline: float | None = None) -> None:
        from docker.errors import APIError
        from docker.utils import parse_repository_tag

        host = registry.registry_of(ref)
        cred = publish.auth_for(host, entries, secrets)[0]  # credential.json, then MAD_REGISTRY_* / MAD_DOCKERHUB_*
        auth = None
        if cred is not None:
            log.note(f"logging in to {host} as {cred.username} ({cred.source})")
            try:
                client.login(username=cred.username, password=cred.password,
                             registry=registry.login_registry(host), reauth=True)
            except APIError as exc:
                raise BuildFailed(registry.redact(
                    f"login to {host} as {cred.username} ({cred.source}) failed: {api_message(exc)}", secrets)) from None
            auth = {"username": cred.username, "password": cred.password}
        self._say(f"pulling {what} {ref} from {host}" + (f" as {cred.username}" if cred else ""), sink)
        repo, tag = parse_repository_tag(ref)
        result: dict[str, Any] = {}
        last = {"t": 0.0}
        was_retrying: set[str] = set()  # layers whose retry countdown has been said
        stop = threading.Event()

        def consume() -> None:
            try:
                for ev in client.api.pull(repo, tag=tag or "latest", stream=True, decode=True, auth_config=auth):
                    if stop.is_set():  # timed out or cancelled: nobody reads this any more
                        break
                    if "error" in ev:
                        result["error"] = str((ev.get("errorDetail") or {}).get("message") or ev["error"])
                        continue
                    status, layer = str(ev.get("status", "")), str(ev.get("id", ""))
                    if status.startswith("Retrying in"):
                        if layer in was_retrying:
                            continue  # the daemon counts down each second: the countdown's first line says it
                        was_retrying.add(layer)
                    else:
                        was_retrying.discard(layer)
                    line = f"{layer}: {status} {ev.get('progress', '')}".strip(": ").strip()
                    if status in ("Downloading", "Extracting"):
                        now = time.monotonic()
                        if now - last["t"] >= 1.0:
                            last["t"] = now
                            self._say(f"{ref}: {line}", None)
                        continue
                    log.write(line)
                    self._say(f"{ref}: {line}", None)
            except APIError as exc:
                result["error"] = api_message(exc)
            except BaseException as exc:  # noqa: BLE001
                result["exception"] = exc

        in_thread(consume, cancel, deadline, stop)
        if "exception" in result:
            raise result["exception"]
        if "error" in result:
            hint = "" if cred or not refused_for_credentials(result["error"]) else (
                f"; no credentials for {host} in {spec_cred_hint(host)}")
            raise BuildFailed(registry.redact(f"cannot pull {what} {ref}: {result['error']}{hint}", secrets))
        log.note(f"pulled {ref}")

    def _ensure_prebuilt(self, client: Any, spec: RunSpec, build: BuildPlan, log_path: Path,
                         sink: OutputSink, cancel: Cancel) -> ImageResult:
        found = _image_labels(client, build.image)
        entries, secrets = _secrets(spec)
        limit = build_timeout(spec)
        log = BuildLog(log_path, secrets)
        try:
            log.note(f"{build.source}: {build.image}, no build")
            start = time.monotonic()
            if found is None:
                self._pull(client, build.image, entries, secrets, log, sink, cancel, what="image",
                           deadline=start + limit)
                found = _image_labels(client, build.image)
            if found is None:
                raise BuildFailed(f"image {build.image} ({build.source}) is not available")
            if build.digest:
                problem = publish.digest_problem(client.api.inspect_image(build.image), build.image, build.digest)
                if problem is not None:
                    log.note(problem)
                    raise BuildFailed(f"{problem} ({build.source}); not run")
                log.note(f"{build.image}: digest {build.digest} verified ({build.source})")
            return ImageResult(build.image, found[0], False, time.monotonic() - start, build.build_hash)
        except StreamTimedOut:
            log.note(f"timed out after {limit:g} s (context key docker_build_timeout): stopped waiting; "
                     "the pull may go on in the Docker daemon until it ends")
            raise BuildFailed(f"image build timed out after {limit:g} s (pulling {build.image}; context key "
                              f"docker_build_timeout); log {log_path}") from None
        finally:
            log.close()

    # -- container

