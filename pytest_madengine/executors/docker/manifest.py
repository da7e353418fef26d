"""``build_manifest.json``: what a build phase made, as madengine 2.x writes it, and what a run
from it needs. Pure apart from reading and (atomically) writing the file.

madengine's fields are kept (``built_images``, ``built_models``, ``context``,
``credentials_required``, ``summary``, ``push_failures``); ours are added beside them
(``build_hash``, ``image_id``, ``build_args``, ``registry_digest``), never in their place.
Where madengine lies we do not: a failed push is a failed build (``summary.failed_builds``
and ``push_failures``), and a run only ever reads the file.

The node side of a run from a manifest (a SLURM job's nodes, a multi-node peer) is
``NodePull``: the argv that pulls an image by its digest, so what runs is exactly what the
build phase pushed (Docker checks the content against the digest while pulling).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_madengine import masking
from pytest_madengine.errors import ExecutorError, UsageError
from pytest_madengine.executors.docker import registry

MANIFEST_NAME = "build_manifest.json"
# Context keys madengine copies into the manifest's ``context``.
CONTEXT_KEYS = ("docker_env_vars", "docker_mounts", "docker_build_arg", "gpu_vendor", "guest_os", "docker_gpus",
                "tools", "pre_scripts", "post_scripts", "encapsulate_script")
HIDDEN = masking.MASK
_HASH_TAG = re.compile(r"[0-9a-f]{64}")


class ManifestError(UsageError):
    """A build manifest cannot be read or does not hold what the run needs."""


def is_secret_name(name: str) -> bool:
    """Build args whose value must never be written down: ``MAD_SECRETS*`` (madengine's secrets)
    and names that say they hold one."""
    return masking.looks_secret(name)


def public_env(env: Mapping[str, Any]) -> dict[str, Any]:
    """Variables as the manifest stores them (a card's ``env_vars``, ``docker_env_vars``): the
    values that are secret by ``masking``'s rule (name, or a marked secret inside) are ``***``.
    madengine writes them in clear; a manifest is copied to other hosts and kept."""
    marked = masking.marked_secrets()
    return {str(k): (HIDDEN if masking.is_secret(str(k), str(v), marked) else v) for k, v in env.items()}


def public_args(args: Mapping[str, str], secret_values: Iterable[str] = ()) -> dict[str, str]:
    """Build args as they may be shown or stored: secret-named ones and any value that is a
    known secret are replaced by ``***``."""
    values = {v for v in secret_values if v}
    return {k: (HIDDEN if is_secret_name(k) or v in values else v) for k, v in sorted(args.items())}


def content_tag(build_hash: str) -> str:
    """The registry tag of an image: the hash of its build inputs, so the same inputs always
    have the same name (a second push is a no-op) and a tag proves what it was built from."""
    if not _HASH_TAG.fullmatch(build_hash):
        raise ValueError(f"not a build hash: {build_hash!r}")
    return build_hash


@dataclass(frozen=True)
class RegistryTarget:
    """``--mad-registry HOST[/NAMESPACE]``."""

    host: str  # "docker.io" for Docker Hub
    namespace: str  # "" or "team/ml"

    @classmethod
    def parse(cls, text: str) -> RegistryTarget:
        raw = text.strip().rstrip("/")
        for scheme in ("https://", "http://"):
            if raw.lower().startswith(scheme):
                raw = raw[len(scheme):]
        if not raw or any(c.isspace() for c in raw) or "@" in raw:
            raise UsageError(f"--mad-registry: {text!r} is not HOST[/NAMESPACE] (e.g. 127.0.0.1:5000 or "
                             "registry.example.com/team)")
        first, _, rest = raw.partition("/")
        if "." in first or ":" in first or first == "localhost":
            host, namespace = first, rest
        elif registry.is_hub(first):
            host, namespace = registry.DOCKER_HUB, rest
        else:  # "myorg": a Docker Hub namespace
            host, namespace = registry.DOCKER_HUB, raw
        if namespace and not re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*", namespace):
            raise UsageError(f"--mad-registry: namespace {namespace!r} must be lower-case path components")
        return cls(host, namespace)

    def repository(self, image: str) -> str:
        """``HOST/NAMESPACE/<image name>``: the local name without its tag, lower-cased as
        registries require."""
        ref = image.split("@", 1)[0]
        last = ref.rsplit("/", 1)[-1]
        name = last.rsplit(":", 1)[0] if ":" in last else last
        name = name.lower()
        return "/".join(p for p in (self.host, self.namespace, name) if p)

    def reference(self, image: str, build_hash: str) -> str:
        return f"{self.repository(image)}:{content_tag(build_hash)}"


@dataclass(frozen=True)
class NodePull:
    """What a node runs before a model's container starts: pull by digest (Docker verifies the
    content against it), then give the image its tagged name. Pure; for SLURM jobs and
    multi-node peers alike."""

    reference: str  # repo:tag as pushed
    digest: str  # sha256:... of the manifest in the registry

    @property
    def repository(self) -> str:
        ref = self.reference.split("@", 1)[0]
        last = ref.rsplit("/", 1)[-1]
        return ref.rsplit(":", 1)[0] if ":" in last else ref

    @property
    def pinned(self) -> str:
        return f"{self.repository}@{self.digest}"

    def argv(self) -> list[list[str]]:
        return [["docker", "pull", self.pinned], ["docker", "tag", self.pinned, self.reference]]

    def script(self, who: str = "") -> str:
        """Lines for a generated shell script (every word quoted): pull or fail, naming the digest.
        ``who``: a shell word put before the message (a SLURM node names itself)."""
        pull, tag = (shlex.join(a) for a in self.argv())
        why = shlex.quote(f"cannot pull {self.pinned} (the image the manifest names, by its digest)")
        return f"{pull} || {{ echo {who}{why} >&2; exit 1; }}\n{tag} || exit 1\n"


@dataclass(frozen=True)
class ImageEntry:
    """One ``built_images`` entry."""

    key: str
    model: str
    docker_image: str
    dockerfile: str = ""
    base_docker: str = ""
    docker_sha: str = ""  # registry digest when pushed, else the local image id (madengine: docker_sha)
    image_id: str = ""
    build_hash: str = ""
    build_duration: float = 0.0
    gpu_architecture: str = ""
    registry: str = ""
    registry_image: str = ""
    push_error: str = ""
    build_args: dict[str, str] = field(default_factory=dict)
    log_file: str = ""
    gpu_vendor: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model, "docker_image": self.docker_image, "dockerfile": self.dockerfile,
            "base_docker": self.base_docker, "docker_sha": self.docker_sha,
            "build_duration": round(self.build_duration, 3), "build_command": self.build_command(),
            "log_file": self.log_file, "gpu_vendor": self.gpu_vendor,
            "build_hash": self.build_hash, "image_id": self.image_id, "build_args": dict(self.build_args),
        }
        if self.gpu_architecture:
            out["gpu_architecture"] = self.gpu_architecture
        if self.registry:
            out["registry"] = self.registry
            out["registry_image"] = self.registry_image
        if self.push_error:
            out["push_error"] = self.push_error
        return out

    def build_command(self) -> str:
        """The equivalent ``docker build`` line, for people (we build through the API); secret
        args already hidden."""
        args = [f"--build-arg={k}={v}" for k, v in sorted(self.build_args.items())]
        return shlex.join(["docker", "build", "--network=host", "-t", self.docker_image, "-f", self.dockerfile, *args, "."])

    @classmethod
    def from_json(cls, key: str, data: Mapping[str, Any], where: str) -> ImageEntry:
        def text(name: str, required: bool = False) -> str:
            value = data.get(name, "")
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise ManifestError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
            if required and not value:
                raise ManifestError(f"{where}: field '{name}' is missing")
            return value

        args = data.get("build_args") or {}
        if not isinstance(args, Mapping):
            raise ManifestError(f"{where}: field 'build_args' must be an object")
        try:
            duration = float(data.get("build_duration") or 0.0)
        except (TypeError, ValueError):
            raise ManifestError(f"{where}: field 'build_duration' must be a number") from None
        return cls(key=key, model=text("model", True), docker_image=text("docker_image") or key,
                   dockerfile=text("dockerfile"), base_docker=text("base_docker"), docker_sha=text("docker_sha"),
                   image_id=text("image_id"), build_hash=text("build_hash"), build_duration=duration,
                   gpu_architecture=text("gpu_architecture"), registry=text("registry"),
                   registry_image=text("registry_image"), push_error=text("push_error"),
                   build_args={str(k): str(v) for k, v in args.items()}, log_file=text("log_file"),
                   gpu_vendor=text("gpu_vendor"))

    def node_pull(self) -> NodePull | None:
        """How a node gets exactly this image (None: not pushed, it exists on the build host only)."""
        if not self.registry_image or not self.docker_sha.startswith("sha256:"):
            return None
        return NodePull(self.registry_image, self.docker_sha)


@dataclass(frozen=True)
class BuildRecord:
    """One model's part of the build phase, as the item reports it to the controller."""

    model: str
    entries: tuple[ImageEntry, ...]
    model_entry: Mapping[str, Any]
    error: str = ""
    failed_arch: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "entries": [dict(e.to_json(), key=e.key) for e in self.entries],
                "model_entry": dict(self.model_entry), "error": self.error, "failed_arch": self.failed_arch}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BuildRecord:
        entries = tuple(ImageEntry.from_json(str(e["key"]), e, "build record") for e in data.get("entries", []))
        return cls(str(data["model"]), entries, dict(data.get("model_entry") or {}), str(data.get("error") or ""),
                   str(data.get("failed_arch") or ""))


def compose(records: Sequence[BuildRecord], context: Mapping[str, Any], credentials_required: Iterable[str]) -> dict[str, Any]:
    """The manifest document of a build phase."""
    built_images: dict[str, Any] = {}
    built_models: dict[str, Any] = {}
    ok: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    push_failures: list[dict[str, Any]] = []
    pushes_ok = 0
    total = 0.0
    for rec in records:
        for e in rec.entries:
            total += e.build_duration
            if e.push_error:
                push_failures.append({"model": e.model, "docker_image": e.docker_image, "registry": e.registry,
                                      "error": e.push_error})
                continue  # an image a cluster cannot pull is not "built" for it
            built_images[e.key] = e.to_json()
            model_entry = dict(rec.model_entry)
            if isinstance(model_entry.get("env_vars"), Mapping):
                model_entry["env_vars"] = public_env(model_entry["env_vars"])
            if e.registry_image:
                pushes_ok += 1
                env = dict(model_entry.get("env_vars") or {})
                env["DOCKER_IMAGE_NAME"] = e.registry_image
                model_entry["env_vars"] = env
            built_models[e.key] = model_entry
            ok.append({"model": e.model, "docker_image": e.docker_image, "build_duration": round(e.build_duration, 3),
                       **({"registry_image": e.registry_image} if e.registry_image else {})})
        if rec.error:
            failed.append({"model": rec.model, "error": rec.error,
                           **({"architecture": rec.failed_arch} if rec.failed_arch else {})})
    ctx: dict[str, Any] = {}
    for key in CONTEXT_KEYS:
        if key in context:
            value = context[key]
            if key == "docker_build_arg" and isinstance(value, Mapping):
                value = public_args({str(k): str(v) for k, v in value.items()})
            if key == "docker_env_vars" and isinstance(value, Mapping):
                value = public_env(value)
            ctx[key] = value
    return {
        "built_images": built_images,
        "built_models": built_models,
        "context": ctx,
        "credentials_required": sorted(set(credentials_required)),
        "summary": {"successful_builds": ok, "failed_builds": failed, "total_build_time": round(total, 3),
                    "successful_pushes": pushes_ok, "failed_pushes": len(push_failures)},
        "push_failures": push_failures,
    }


def write_atomic(path: Path, document: Mapping[str, Any]) -> None:
    """Write beside the target and rename over it: a reader (another node, a SLURM job) sees the
    old manifest or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(document, fh, indent=2, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@dataclass(frozen=True)
class Manifest:
    path: Path
    images: tuple[ImageEntry, ...]
    models: Mapping[str, Any]  # built_models

    @property
    def model_names(self) -> list[str]:
        return sorted({e.model for e in self.images})

    def image_for(self, model: str, arch: str = "") -> ImageEntry:
        """The image ``model`` runs in: its only entry, or the one built for ``arch``.
        Raises ExecutorError naming the file and the model."""
        mine = [e for e in self.images if e.model == model]
        if not mine:
            have = ", ".join(self.model_names[:10]) or "none"
            raise ExecutorError(f"model '{model}' is not in the manifest {self.path} (built_images has models: {have}); "
                                "build it first (--mad-build-only) or leave it out of --mad-tags")
        if len(mine) == 1:
            return mine[0]
        for_arch = [e for e in mine if e.gpu_architecture and e.gpu_architecture == arch]
        if len(for_arch) == 1:
            return for_arch[0]
        archs = ", ".join(sorted(e.gpu_architecture or e.key for e in mine))
        raise ExecutorError(f"model '{model}' has {len(mine)} images in the manifest {self.path} ({archs}) and none "
                            f"is for this host's GPU architecture {arch or '(unknown)'}: set MAD_SYSTEM_GPU_ARCHITECTURE "
                            "in the context to choose")


def load(path: Path) -> Manifest:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"--mad-manifest: {path} does not exist (write one with --mad-build-only)") from None
    except OSError as exc:
        raise ManifestError(f"--mad-manifest: {path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    built = data.get("built_images")
    if not isinstance(built, dict):
        raise ManifestError(f"{path}: field 'built_images' must be an object (image name -> entry)")
    images = []
    for key, entry in built.items():
        where = f"{path}: built_images entry '{key}'"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where} must be an object")
        images.append(ImageEntry.from_json(str(key), entry, where))
    models = data.get("built_models") or {}
    if not isinstance(models, dict):
        raise ManifestError(f"{path}: field 'built_models' must be an object")
    return Manifest(path, tuple(images), models)


def use_image(value: str, model_name: str, env_vars: Mapping[str, str]) -> tuple[str, str]:
    """``--mad-use-image IMG|auto`` for one model: (image, where it came from). ``auto`` is the
    card's ``env_vars.DOCKER_IMAGE_NAME``, as madengine's ``--use-image auto``; a card without
    one fails its own item, naming the field."""
    if value != "auto":
        return value, "--mad-use-image"
    name = str(env_vars.get("DOCKER_IMAGE_NAME") or "").strip()
    if not name:
        raise ExecutorError(f"--mad-use-image auto: model '{model_name}' has no env_vars.DOCKER_IMAGE_NAME "
                            "(models.json field 'env_vars') to run in")
    return name, "--mad-use-image auto (the card's DOCKER_IMAGE_NAME)"
