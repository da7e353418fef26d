"""Clone a model card's ``url`` repository the way madengine does, without leaking credentials.

What madengine does (``src/madengine/execution/container_runner.py``, ``run_container``; the
legacy ``src/madengine/tools/run_models.py``, ``run_model_impl``), inside the container with the
workspace as working directory:

* the folder is ``url.rstrip("/").split("/")[-1]`` (a warning when it holds anything but
  letters, digits, ``-`` and ``_``); it is ``rm -rf``-ed first;
* ``git clone <url>`` (no ``--recursive``, 240 s timeout); with the model's ``cred`` field set,
  the ``credential.json`` entry of that name is used: for ``ssh://`` its ``username`` and
  ``ssh_key_file`` go into ``core.sshCommand``, otherwise ``git clone -c credential.helper='!f()
  { echo username=..; echo password=..; };f' <url>``, i.e. the password on a shell command line;
* perf.csv's ``git_commit`` is ``git rev-parse HEAD`` in the clone, taken *before*
  ``git submodule update --init --recursive`` runs there;
* the model's scripts folder is copied into the clone and the script runs from the clone's root
  (``cd <folder> && bash run.sh <args>``).

Here: one ``git clone [--recurse-submodules] -- <url> <dest>`` (the same tree as madengine's
clone + submodule update; the superproject's HEAD, and so ``git_commit``, is unchanged by the
submodules), run as an argv list, never a shell string.

Credentials never enter argv or the URL (argv is visible to every user through ``ps``, and git
echoes URLs in its messages). A userinfo written into the URL is stripped and moved into the
environment; git asks the constant helper ``CREDENTIAL_HELPER`` (installed through
``GIT_CONFIG_COUNT``), which prints ``MAD_GIT_USER`` / ``MAD_GIT_PASSWORD``. The helper is scoped
to the clone URL's scheme and host, so a submodule on another host is never sent the password,
and the helper list for that host is reset first, so the user's own helpers (``store``,
``cache``) neither answer nor save the password.

``file://`` and path submodules: since git 2.38.1 (CVE-2022-39253) submodule clones refuse the
``file`` transport. We pass ``-c protocol.file.allow=always`` only when the repository itself is
cloned from local disk: then the submodules are the user's own. For a remote repository git's
default stands, so a hostile ``.gitmodules`` cannot pull repositories off the runner's disk into
the run folder. ``protocol.ext.allow=never`` is always set: ``ext::`` URLs run commands.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any
from urllib.parse import unquote

from pytest_madengine import process
from pytest_madengine.errors import MadError

# The helper is a constant: user data reaches it only through the two environment variables,
# so nothing from a models.json or credential.json is ever parsed by a shell. printf with
# quoted expansions keeps spaces, '*' and '$' in a password intact; "get" is the only
# operation answered, so store/erase calls from git are no-ops.
CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || exit 0; '
    "printf 'username=%s\\npassword=%s\\n' \"$MAD_GIT_USER\" \"$MAD_GIT_PASSWORD\"; }; f"
)
USER_ENV = "MAD_GIT_USER"
PASSWORD_ENV = "MAD_GIT_PASSWORD"
MASK = "***"
MAX_DIR_NAME = 100
KILL_GRACE_S = 5.0
REV_PARSE_TIMEOUT_S = 30.0

# Variables that point git at some other repository; inherited from a caller (a git hook, a
# test runner started by git) they would make ``git clone``/``rev-parse`` act on the wrong repo.
_REPO_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
             "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_NAMESPACE", "GIT_PREFIX")
_SCHEME_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<netloc>[^/?#]*)(?P<rest>.*)$", re.S)
_USERINFO_IN_TEXT = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")
_HTTP = frozenset({"http", "https"})


class CloneError(MadError):
    """A model's repository cannot be cloned; the message is one line and holds no secret."""


@dataclass(frozen=True)
class Credential:
    username: str
    password: str

    def __repr__(self) -> str:
        # Dataclass reprs end up in tracebacks, pytest's assertion rewriting and logs.
        return f"Credential(username={self.username!r}, password={MASK!r})"

    __str__ = __repr__


@dataclass(frozen=True)
class ClonePlan:
    """One ``git clone``: what to run, with which extra environment, into which folder."""

    argv: tuple[str, ...]
    # The environment holds the password: never shown, never hashed.
    env: Mapping[str, str] = field(repr=False, hash=False)
    dest: Path
    display_url: str  # the URL as written, any userinfo masked
    has_credential: bool = False
    secrets: tuple[str, ...] = field(default=(), repr=False, hash=False)  # values to redact from output

    def render(self) -> str:
        """The command for humans: the URL as written with its userinfo masked; no env values."""
        words = [self.display_url if i == len(self.argv) - 2 else word for i, word in enumerate(self.argv)]
        text = shlex.join(words)
        if self.has_credential:
            text += f"  (credentials from a credential helper via ${USER_ENV}/${PASSWORD_ENV})"
        return text


@dataclass(frozen=True)
class CloneResult:
    commit: str  # what madengine puts into perf.csv's git_commit
    path: Path
    duration_s: float


def repo_dir_name(url: str) -> str:
    """The folder the clone goes into: the URL's last path component, as madengine names it.

    madengine takes ``url.rstrip("/").split("/")[-1]`` and only warns about odd characters.
    Differences, all for URLs that cannot work or are unsafe there: a ``.git`` / ``/.git``
    suffix is dropped (``git clone`` itself drops it, so madengine's ``cd foo.git`` fails);
    ``host:path`` URLs use the part after the colon; a URL without a path uses the host;
    characters other than letters, digits, ``.``, ``_``, ``-`` become ``_``; leading dots and
    dashes go (no ``..``, no hidden folder, nothing that reads as an option); an empty result is
    ``repo``. The name is never a path: no separator survives.
    """
    text = url.strip()
    match = _SCHEME_URL.match(text)
    if match:
        # The regex, not urlsplit: that raises on a malformed "[v6" host; this never does.
        path = re.split(r"[?#]", match["rest"], maxsplit=1)[0]
        if not path.strip("/"):
            path = re.sub(r":\d*$", "", match["netloc"].rpartition("@")[2])  # the host, no port
    elif _is_scp_like(text):
        path = text.split(":", 1)[1]
    else:
        path = text
    path = path.replace("\\", "/").rstrip("/")
    if path.endswith("/.git"):
        path = path[: -len("/.git")].rstrip("/")
    name = path.rsplit("/", 1)[-1]
    if name.endswith(".git"):
        name = name[: -len(".git")]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".-")[:MAX_DIR_NAME]
    return name or "repo"


def credential_for(url: str, cred_name: str, credentials: Mapping[str, Any]) -> Credential | None:
    """The login for cloning ``url``, from madengine's ``credential.json`` entries.

    ``credential.json`` maps names to ``{"username": ..., "password": ...}`` (also entries like
    ``{"username", "ssh_key_file"}``, lists such as ``NAS_NODES``, upper-case ``USERNAME`` keys).
    With the model's ``cred`` field set, that entry is used, as madengine does, and a missing one
    is an error. Without it, an entry keyed by the URL's host (``github.com`` or
    ``https://github.com``) is used when there is one; madengine does not look hosts up, but the
    credential then only goes to the host it is keyed by.

    Only http(s) clones use a username/password; for other schemes (ssh, git, file) the result is
    None and git uses the user's own ssh setup (madengine's ``ssh_key_file`` is not supported).
    """
    scheme, host = _scheme_host(url)
    usable = scheme in _HTTP
    if cred_name:
        if cred_name not in credentials:
            raise CloneError(f"credentials '{cred_name}' (the model's cred field) are not in credential.json")
        if not usable:
            return None
        return _entry_credential(cred_name, credentials[cred_name], required=True)
    if not usable or not host:
        return None
    for key, entry in credentials.items():
        if _key_host(str(key)) == host:
            found = _entry_credential(str(key), entry, required=False)
            if found is not None:
                return found
    return None


def clone_plan(url: str, dest: Path, *, credential: Credential | None, submodules: bool = True) -> ClonePlan:
    """The ``git clone`` of ``url`` into ``dest``; pure (reads no file, runs nothing).

    A userinfo in an http(s) URL wins over ``credential`` (it is the more specific of the two),
    field by field: ``https://bob@host/x`` with a credential uses bob and the credential's
    password. Other schemes keep the user name (ssh needs it) and lose any password, which git
    could not use there anyway.
    """
    _check_url(url)
    display_url = _mask_userinfo(url)
    clean_url, url_user, url_password = _split_userinfo(url)
    scheme, host = _scheme_host(clean_url)
    local = _is_local(url)

    config: list[tuple[str, str]] = [("protocol.ext.allow", "never")]
    if local:
        config.append(("protocol.file.allow", "always"))
    argv: list[str] = ["git"]
    for key, value in config:
        argv += ["-c", f"{key}={value}"]
    argv += ["clone"]
    if submodules:
        argv.append("--recurse-submodules")

    env: dict[str, str] = {
        "GIT_TERMINAL_PROMPT": "0",  # fail at once instead of waiting for a password
        "GIT_ASKPASS": "",  # set but empty: no GUI askpass (SSH_ASKPASS, core.askPass) either
    }
    secrets: tuple[str, ...] = ()
    has_credential = False
    if scheme in _HTTP:
        user = url_user or (credential.username if credential else "")
        password = url_password or (credential.password if credential else "")
        if password:
            for what, value in (("username", user), ("password", password)):
                if "\n" in value or "\0" in value:
                    raise CloneError(f"the {what} for {display_url} holds a newline or NUL byte")
            scope = f"credential.{scheme}://{host}.helper"
            env.update({
                "GIT_CONFIG_COUNT": "2",
                # An empty helper resets the list for this host: the user's helpers stay out.
                "GIT_CONFIG_KEY_0": scope, "GIT_CONFIG_VALUE_0": "",
                "GIT_CONFIG_KEY_1": scope, "GIT_CONFIG_VALUE_1": CREDENTIAL_HELPER,
                USER_ENV: user, PASSWORD_ENV: password,
            })
            secrets = (password,)
            has_credential = True
        elif url_user:
            # A user name alone is no secret, and git needs it to ask for the right account.
            clean_url = _with_netloc(clean_url, f"{_quote_user(url_user)}@{_netloc_host(clean_url)}")
    elif url_user:
        clean_url = _with_netloc(clean_url, f"{_quote_user(url_user)}@{_netloc_host(clean_url)}")

    argv += ["--", clean_url, str(dest)]
    return ClonePlan(tuple(argv), MappingProxyType(env), dest, display_url, has_credential, secrets)


def run_clone(plan: ClonePlan, *, deadline_s: float, log: Callable[[str], None],
              cancel: Callable[[], bool] | None = None) -> CloneResult:
    """Run the plan; return the checked-out commit and folder, or raise ``CloneError``.

    git runs in its own session (process group, no controlling terminal, stdin closed), so a
    deadline or ``cancel`` kills it with every helper it started (ssh, submodule clones, a
    proxy command). Output lines go to ``log`` with the password and any URL userinfo masked.
    A failed clone leaves no folder behind.
    """
    started = time.monotonic()
    redact = _redactor(plan.secrets)
    dest = plan.dest
    existed = dest.exists()
    if existed and (not dest.is_dir() or any(dest.iterdir())):
        raise CloneError(f"cannot clone {plan.display_url}: {dest} already exists and is not an empty folder")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CloneError(f"cannot clone {plan.display_url}: cannot create {dest.parent}: {exc.strerror or exc}") from None

    env = _child_env(os.environ, plan.env)
    log(f"$ {plan.render()}")
    try:
        proc = subprocess.Popen(plan.argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise CloneError(f"cannot run git: {exc.strerror or exc}") from None

    stderr_lines: list[str] = []
    lock = threading.Lock()

    def pump(stream: IO[bytes], keep: list[str] | None) -> None:
        for raw in stream:
            for piece in raw.decode("utf-8", "replace").replace("\r", "\n").split("\n"):
                line = redact(piece.rstrip())
                if not line:
                    continue
                with lock:  # two readers, one log
                    if keep is not None:
                        keep.append(line)
                    log(line)

    assert proc.stdout is not None and proc.stderr is not None
    readers = [threading.Thread(target=pump, args=(proc.stdout, None), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, stderr_lines), daemon=True)]
    for reader in readers:
        reader.start()

    stop_reason = ""
    try:
        why = process.wait(proc, cancel or (lambda: False), process.Deadline(deadline_s, started))
        if why is not None:
            stop_reason = "cancelled" if why == process.CANCELLED else f"timed out after {deadline_s:g} s"
            # git removes its half-made folder on SIGTERM; wait for git only, not its zombies
            process.kill_group(proc.pid, KILL_GRACE_S, proc, leader_only=True)
    finally:
        process.kill_now(proc.pid)  # also on KeyboardInterrupt: nothing of the clone may outlive this call
        proc.wait()
        for reader in readers:
            reader.join(timeout=5)

    if stop_reason or proc.returncode != 0:
        _remove_partial(dest, existed)
        reason = stop_reason or _failure_line(stderr_lines, proc.returncode)
        raise CloneError(f"git clone of {plan.display_url} failed: {reason}")

    commit = _head_commit(dest, env, redact)
    if commit is None:
        _remove_partial(dest, existed)
        raise CloneError(f"git clone of {plan.display_url} gave no commit (an empty repository?)")
    log(f"cloned {plan.display_url} at {commit}")
    return CloneResult(commit, dest, time.monotonic() - started)


# ---------------------------------------------------------------------------------------------


def _check_url(url: str) -> None:
    if not url or not url.strip():
        raise CloneError("the model's url is empty")
    if url != url.strip():
        raise CloneError(f"the model's url {_mask_userinfo(url.strip())!r} has leading or trailing spaces")
    if any(ord(c) < 32 or ord(c) == 127 for c in url):
        raise CloneError(f"the model's url {_mask_userinfo(url)!r} holds control characters")
    if url.startswith("-"):
        # "--" in argv already stops option parsing; a URL like this is a mistake or an attack.
        raise CloneError(f"the model's url {_mask_userinfo(url)!r} starts with '-'")


def _is_scp_like(url: str) -> bool:
    """git's ``[user@]host:path``: a colon before any slash, and not a scheme URL."""
    if "://" in url:
        return False
    colon, slash = url.find(":"), url.find("/")
    if colon <= 0 or (slash != -1 and slash < colon):
        return False
    return not (colon == 1 and url[0].isalpha())  # "C:\x": a Windows drive, a local path


def _is_local(url: str) -> bool:
    if "://" in url:
        return url.lower().startswith("file://")
    return not _is_scp_like(url)


def _split_userinfo(url: str) -> tuple[str, str, str]:
    """(url without userinfo, user, password); user and password percent-decoded as git does."""
    match = _SCHEME_URL.match(url)
    if not match or "@" not in match["netloc"]:
        return url, "", ""
    userinfo, _, hostport = match["netloc"].rpartition("@")
    user, _, password = userinfo.partition(":")
    return f"{match['scheme']}://{hostport}{match['rest']}", unquote(user), unquote(password)


def _mask_userinfo(url: str) -> str:
    match = _SCHEME_URL.match(url)
    if not match or "@" not in match["netloc"]:
        return url
    hostport = match["netloc"].rpartition("@")[2]
    return f"{match['scheme']}://{MASK}@{hostport}{match['rest']}"


def _netloc_host(url: str) -> str:
    match = _SCHEME_URL.match(url)
    return match["netloc"].rpartition("@")[2] if match else ""


def _with_netloc(url: str, netloc: str) -> str:
    match = _SCHEME_URL.match(url)
    return f"{match['scheme']}://{netloc}{match['rest']}" if match else url


def _quote_user(user: str) -> str:
    return re.sub(r"[^A-Za-z0-9._~!$&'()*+,;=-]", lambda m: "".join(f"%{b:02X}" for b in m[0].encode()), user)


def _scheme_host(url: str) -> tuple[str, str]:
    """(lower-case scheme, host[:port] without userinfo); ("", "") for paths and scp-like URLs."""
    match = _SCHEME_URL.match(url)
    if not match:
        return "", ""
    return match["scheme"].lower(), match["netloc"].rpartition("@")[2].lower()


def _key_host(key: str) -> str:
    text = key.strip().lower()
    if "://" in text:
        text = text.split("://", 1)[1]
    return text.split("/", 1)[0].rpartition("@")[2]


def _entry_credential(name: str, entry: Any, *, required: bool) -> Credential | None:
    if not isinstance(entry, Mapping):
        if required:
            raise CloneError(f"credential.json entry '{name}' must be an object with username and password")
        return None
    fields = {str(k).lower(): v for k, v in entry.items()}
    user, password = fields.get("username"), fields.get("password")
    if isinstance(user, str) and isinstance(password, str) and user and password:
        return Credential(user, password)
    if required:
        # Name the keys that are there, never their values.
        have = ", ".join(sorted(map(str, entry))) or "nothing"
        raise CloneError(f"credential.json entry '{name}' needs 'username' and 'password' "
                         f"for an http(s) clone (it has {have})")
    return None


def _child_env(base: Mapping[str, str], additions: Mapping[str, str]) -> dict[str, str]:
    """``base`` + ``additions``, keeping config the caller passes through ``GIT_CONFIG_COUNT``:
    our numbered entries go after theirs (later entries win, so ours still apply)."""
    env = {k: v for k, v in base.items() if k not in _REPO_ENV}
    extra = dict(additions)
    ours = int(extra.pop("GIT_CONFIG_COUNT", "0") or 0)
    try:
        theirs = int(env.get("GIT_CONFIG_COUNT", "0") or 0)
    except ValueError:
        theirs = 0  # git itself refuses a bad count; let it say so only if we add nothing
    if ours:
        for i in range(ours):
            env[f"GIT_CONFIG_KEY_{theirs + i}"] = extra.pop(f"GIT_CONFIG_KEY_{i}")
            env[f"GIT_CONFIG_VALUE_{theirs + i}"] = extra.pop(f"GIT_CONFIG_VALUE_{i}")
        env["GIT_CONFIG_COUNT"] = str(theirs + ours)
    env.update(extra)
    return env


def _redactor(secrets: tuple[str, ...]) -> Callable[[str], str]:
    ordered = sorted((s for s in secrets if s), key=len, reverse=True)

    def redact(text: str) -> str:
        for secret in ordered:
            text = text.replace(secret, MASK)
        return _USERINFO_IN_TEXT.sub(lambda m: m[1] + MASK + "@", text)

    return redact


def _failure_line(stderr_lines: list[str], returncode: int | None) -> str:
    """The first ``fatal:`` line is the cause; later ones (and git's "Retry scheduled" /
    "aborting" for submodules) are consequences. Else git's last line, else the status."""
    for line in stderr_lines:
        if line.startswith("fatal:"):
            return line
    if stderr_lines:
        return stderr_lines[-1]
    return f"git exited with status {returncode}"


def _head_commit(dest: Path, env: Mapping[str, str], redact: Callable[[str], str]) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(dest), "rev-parse", "--verify", "-q", "HEAD"], env=dict(env),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=REV_PARSE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CloneError(f"cannot read the commit of {dest}: {redact(str(exc))}") from None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", commit) else None


def _remove_partial(dest: Path, existed: bool) -> None:
    """git removes its folder on most failures, but not after SIGKILL or a failed submodule."""
    if not dest.exists():
        return
    shutil.rmtree(dest, ignore_errors=True)
    if existed:
        dest.mkdir(exist_ok=True)  # it was an empty folder someone else made: leave it so
