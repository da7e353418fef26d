"""Push a built image to ``--mad-registry`` under its content name, and check that an image a run
is given (from a manifest) is the one the manifest names.

Login is ``DockerClient.login`` with the password from credential.json or the environment:
it travels in the API request body, never in argv, and every message is passed through
``registry.redact``. The push is skipped when the registry already holds the tag: the tag is
the hash of the build inputs, so the same tag means the same inputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_madengine.executors.docker import registry
from pytest_madengine.executors.docker.daemon import api_message
from pytest_madengine.executors.docker.manifest import RegistryTarget


class PushFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Pushed:
    reference: str  # HOST/NS/name:<build hash>
    digest: str  # sha256:... the registry's manifest digest
    skipped: bool  # the registry already held this tag


def auth_for(host: str, entries: Mapping[str, Any], secrets: set[str]) -> tuple[registry.Credential | None, dict[str, str] | None]:
    """The credential for ``host`` (credential.json entry, or MAD_DOCKERHUB_* / MAD_REGISTRY_* env)."""
    cred = registry.credential_for(host, entries)
    if cred is None:
        user, password = os.environ.get("MAD_REGISTRY_USER", ""), os.environ.get("MAD_REGISTRY_PASSWORD", "")
        if user and password:
            cred = registry.Credential(host, user, password, "env MAD_REGISTRY_USER/MAD_REGISTRY_PASSWORD")
    if cred is None:
        return None, None
    secrets.add(cred.password)
    return cred, {"username": cred.username, "password": cred.password}


def login(client: Any, host: str, cred: registry.Credential | None, secrets: set[str]) -> None:
    if cred is None:
        return
    from docker.errors import APIError

    try:
        client.login(username=cred.username, password=cred.password, registry=registry.login_registry(host),
                     reauth=True)
    except APIError as exc:
        raise PushFailed(registry.redact(f"login to {host} as {cred.username} ({cred.source}) failed: "
                                         f"{api_message(exc)}", secrets)) from None
    except Exception as exc:  # noqa: BLE001 - connection refused and the like: the registry's answer
        raise PushFailed(registry.redact(f"login to {host} failed: {type(exc).__name__}: {exc}", secrets)) from None


def remote_digest(client: Any, reference: str, auth: dict[str, str] | None) -> str | None:
    """The digest the registry holds for ``reference``, None when it has no such tag."""
    from docker.errors import APIError, NotFound

    try:
        data = client.api.inspect_distribution(reference, auth_config=auth)
    except NotFound:
        return None
    except APIError as exc:
        text = api_message(exc).lower()
        if "manifest unknown" in text or "not found" in text or "no such" in text:
            return None
        raise
    descriptor = data.get("Descriptor") or {}
    digest = descriptor.get("digest") or descriptor.get("Digest")  # the daemon writes it lower-case
    return str(digest) if digest else None


def push(client: Any, image_id: str, target: RegistryTarget, local_name: str, build_hash: str,
         entries: Mapping[str, Any], secrets: set[str], say: Callable[[str], None]) -> Pushed:
    """Tag ``image_id`` as ``target``'s content name and push it. Raises PushFailed with the
    registry's answer (redacted); the tag goes again then: a local name saying the registry
    holds an image it does not hold would mislead (the image keeps its own name)."""
    reference = target.reference(local_name, build_hash)
    tagged: list[bool] = []
    try:
        return _push(client, image_id, reference, target, entries, secrets, say, tagged)
    except PushFailed:
        if tagged:
            try:
                client.api.remove_image(reference, noprune=True)
            except Exception:  # noqa: BLE001 - best effort: the daemon may be gone too
                pass
        raise


def _push(client: Any, image_id: str, reference: str, target: RegistryTarget, entries: Mapping[str, Any],
          secrets: set[str], say: Callable[[str], None], tagged: list[bool]) -> Pushed:
    from docker.errors import APIError

    repo, tag = reference.rsplit(":", 1)
    cred, auth = auth_for(target.host, entries, secrets)
    try:
        login(client, target.host, cred, secrets)
        client.api.tag(image_id, repo, tag=tag, force=True)
        tagged.append(True)
        try:
            existing = remote_digest(client, reference, auth)
        except APIError:
            existing = None  # the push below gives the registry's real answer
        if existing is not None:
            say(f"{reference}: already in the registry ({existing[:19]}), push skipped")
            return Pushed(reference, existing, True)
        say(f"pushing {reference}" + (f" as {cred.username}" if cred else ""))
        digest = ""
        error = ""
        for ev in client.api.push(repo, tag=tag, stream=True, decode=True, auth_config=auth):
            if "error" in ev:
                error = str((ev.get("errorDetail") or {}).get("message") or ev["error"])
            aux = ev.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = str(aux["Digest"])
        if error:
            raise PushFailed(registry.redact(f"push of {reference} failed: {error}", secrets))
        if not digest:
            digest = remote_digest(client, reference, auth) or ""
        if not digest:
            raise PushFailed(f"push of {reference} ended without a digest from the registry")
        say(f"pushed {reference} ({digest})")
        return Pushed(reference, digest, False)
    except PushFailed:
        raise
    except APIError as exc:
        raise PushFailed(registry.redact(f"push of {reference} failed: {api_message(exc)}", secrets)) from None
    except Exception as exc:  # noqa: BLE001 - the daemon could not reach the registry
        raise PushFailed(registry.redact(f"push of {reference} failed: {type(exc).__name__}: {exc}", secrets)) from None


def digest_problem(attrs: Mapping[str, Any], reference: str, want: str) -> str | None:
    """Why a local image is not the one a manifest names (None: it is). ``want`` is a registry
    digest (its RepoDigests must hold it) or, for an image never pushed, the image id."""
    if not want:
        return None
    if want == attrs.get("Id"):
        return None
    repo = reference.split("@", 1)[0]
    last = repo.rsplit("/", 1)[-1]
    if ":" in last:
        repo = repo.rsplit(":", 1)[0]
    have = [str(d) for d in attrs.get("RepoDigests") or []]
    if f"{repo}@{want}" in have:
        return None
    shown = ", ".join(d.split("@", 1)[1] for d in have if d.startswith(repo + "@")) or attrs.get("Id", "?")
    return f"digest mismatch for {reference}: the manifest says {want}, the image here is {shown}"
