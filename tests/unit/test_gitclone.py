"""gitclone: plans (pure), credentials from credential.json, and real ``git`` clones of local
repositories made in tmp_path, a local HTTP server that demands a password, and a
``GIT_PROXY_COMMAND`` that never answers (for deadlines and cancellation)."""

from __future__ import annotations

import base64
import http.server
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_madengine.errors import MadError
from pytest_madengine.workspace.gitclone import (
    CREDENTIAL_HELPER,
    PASSWORD_ENV,
    USER_ENV,
    CloneError,
    ClonePlan,
    Credential,
    _child_env,
    clone_plan,
    credential_for,
    repo_dir_name,
    run_clone,
)

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")
SECRET = "hunter2-S3cr3t"


@pytest.fixture(autouse=True)
def git_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No user or system git config, no proxies, no inherited GIT_CONFIG_* entries."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in list(os.environ):
        if name.startswith(("GIT_CONFIG_", "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX")) or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("GIT_CONFIG_PARAMETERS", raising=False)
    monkeypatch.delenv("GIT_PROXY_COMMAND", raising=False)
    for var, value in (("GIT_AUTHOR_NAME", "t"), ("GIT_AUTHOR_EMAIL", "t@example.com"),
                       ("GIT_COMMITTER_NAME", "t"), ("GIT_COMMITTER_EMAIL", "t@example.com")):
        monkeypatch.setenv(var, value)
    return home


def git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def make_repo(path: Path, files: dict[str, str]) -> str:
    path.mkdir(parents=True)
    git("init", "-q", cwd=path)
    for name, text in files.items():
        (path / name).write_text(text)
    git("add", ".", cwd=path)
    git("commit", "-q", "-m", "init", cwd=path)
    return git("rev-parse", "HEAD", cwd=path)


def git_version() -> tuple[int, ...]:
    found = re.search(r"(\d+)\.(\d+)\.(\d+)", git("--version"))
    return tuple(int(x) for x in found.groups()) if found else (0,)


class Lines(list[str]):
    def __call__(self, line: str) -> None:
        self.append(line)


# --- repo_dir_name -----------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "name"), [
    ("https://github.com/ROCm/pytorch-micro-benchmarking", "pytorch-micro-benchmarking"),  # madengine's own
    ("https://github.com/huggingface/transformers/", "transformers"),  # trailing slash, as madengine
    ("https://github.com/huggingface/transformers.git", "transformers"),  # git's folder, not "transformers.git"
    ("https://host/group/repo/.git", "repo"),
    ("https://user:pw@host/x/my_repo", "my_repo"),
    ("git@github.com:org/repo.git", "repo"),
    ("git@github.com:repo.git", "repo"),
    ("ssh://git@host:2222/a/b.git", "b"),
    ("file:///tmp/some/where/up/", "up"),
    ("/abs/path/to/repo", "repo"),
    ("../../etc", "etc"),
    ("https://host/..", "repo"),
    ("https://host/x/..", "repo"),
    ("https://host/x/.hidden", "hidden"),
    ("https://host/x/-rf", "rf"),
    ("https://host/x/my repo;rm -rf", "my_repo_rm_-rf"),
    ("https://host/x/r%C3%A9po", "r_C3_A9po"),
    ("https://host/x/répo", "r_po"),
    ("https://example.com", "example.com"),
    ("https://example.com/", "example.com"),
    ("https://user:pw@example.com:8443", "example.com"),
    ("https://host/x/bench?ref=main#top", "bench"),
    ("https://[abc/x", "x"),
    ("", "repo"),
    ("C:\\work\\repos\\bench", "bench"),
])
def test_repo_dir_name(url: str, name: str) -> None:
    assert repo_dir_name(url) == name


def test_repo_dir_name_is_never_a_path_and_bounded() -> None:
    for url in ("https://h/" + "a" * 500, "https://h/x/../../..", "/", "//", ".git", "https://h/.git"):
        name = repo_dir_name(url)
        assert name and "/" not in name and name not in (".", "..") and len(name) <= 100
        assert not name.startswith((".", "-"))


# --- Credential / credential_for ---------------------------------------------------------------


def test_credential_repr_masks_password() -> None:
    cred = Credential("alice", SECRET)
    assert SECRET not in repr(cred) and SECRET not in str(cred) and SECRET not in f"{[cred]}"
    assert "alice" in repr(cred)


CREDS = {
    "ROCmSoftwarePlatform": {"username": "bob", "password": SECRET},
    "gerrit-git.amd.com": {"username": "gerrit-user", "ssh_key_file": "id_rsa"},
    "https://git.example.com": {"USERNAME": "carol", "PASSWORD": "carol-pw"},
    "NAS_NODES": [{"NAME": "default"}],
}


def test_credential_for_by_cred_name() -> None:
    assert credential_for("https://github.com/ROCm/x", "ROCmSoftwarePlatform", CREDS) == Credential("bob", SECRET)


def test_credential_for_missing_name_is_an_error_naming_it() -> None:
    with pytest.raises(CloneError, match="'AMD_GITHUB'") as err:
        credential_for("https://github.com/ROCm/x", "AMD_GITHUB", CREDS)
    assert isinstance(err.value, MadError)


def test_credential_for_entry_without_password_is_an_error_for_https() -> None:
    with pytest.raises(CloneError, match="needs 'username' and 'password'") as err:
        credential_for("https://gerrit-git.amd.com/x", "gerrit-git.amd.com", CREDS)
    assert "id_rsa" not in str(err.value)  # key names only, never values
    with pytest.raises(CloneError, match="must be an object"):
        credential_for("https://h/x", "NAS_NODES", CREDS)


def test_credential_for_non_http_schemes_need_none() -> None:
    assert credential_for("ssh://gerrit-git.amd.com:29418/x", "gerrit-git.amd.com", CREDS) is None
    assert credential_for("git@github.com:ROCm/x.git", "ROCmSoftwarePlatform", CREDS) is None
    assert credential_for("/local/path", "", CREDS) is None


def test_credential_for_by_host_without_cred_name() -> None:
    assert credential_for("https://git.example.com/a/b.git", "", CREDS) == Credential("carol", "carol-pw")
    assert credential_for("https://GIT.example.com/a/b.git", "", CREDS) == Credential("carol", "carol-pw")
    assert credential_for("https://other.example.com/a/b.git", "", CREDS) is None
    # host keys without a password are skipped, not an error: the model did not ask for them
    assert credential_for("https://gerrit-git.amd.com/x", "", CREDS) is None


# --- clone_plan (pure) -------------------------------------------------------------------------


def test_plan_with_credential_keeps_it_out_of_argv(tmp_path: Path) -> None:
    dest = tmp_path / "run" / "x"
    plan = clone_plan("https://github.com/ROCm/x.git", dest, credential=Credential("alice", SECRET))
    assert plan.argv[-3:] == ("--", "https://github.com/ROCm/x.git", str(dest))
    assert "clone" in plan.argv and "--recurse-submodules" in plan.argv
    assert not any(SECRET in a or "alice" in a for a in plan.argv)
    env = dict(plan.env)
    assert env[USER_ENV] == "alice" and env[PASSWORD_ENV] == SECRET
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["GIT_ASKPASS"] == ""
    assert env["GIT_CONFIG_COUNT"] == "2"
    assert env["GIT_CONFIG_KEY_0"] == env["GIT_CONFIG_KEY_1"] == "credential.https://github.com.helper"
    assert env["GIT_CONFIG_VALUE_0"] == "" and env["GIT_CONFIG_VALUE_1"] == CREDENTIAL_HELPER
    assert SECRET not in CREDENTIAL_HELPER and "alice" not in CREDENTIAL_HELPER
    assert SECRET not in plan.render() and SECRET not in repr(plan)
    assert plan.has_credential and plan.dest == dest


def test_plan_moves_url_userinfo_into_the_environment(tmp_path: Path) -> None:
    url = "https://alice:p%40ss%20w0rd@example.com:8443/org/repo.git"
    plan = clone_plan(url, tmp_path / "repo", credential=None)
    assert plan.argv[-2] == "https://example.com:8443/org/repo.git"
    assert plan.env[USER_ENV] == "alice" and plan.env[PASSWORD_ENV] == "p@ss w0rd"  # decoded as git does
    assert plan.env["GIT_CONFIG_KEY_1"] == "credential.https://example.com:8443.helper"
    assert plan.display_url == "https://***@example.com:8443/org/repo.git"
    assert "https://***@example.com:8443/org/repo.git" in plan.render()
    for text in (plan.render(), repr(plan), " ".join(plan.argv)):
        assert "p%40ss" not in text and "p@ss w0rd" not in text and "alice" not in text


def test_plan_url_userinfo_wins_over_credential_field_by_field(tmp_path: Path) -> None:
    plan = clone_plan("https://bob@example.com/r", tmp_path / "r", credential=Credential("alice", SECRET))
    assert (plan.env[USER_ENV], plan.env[PASSWORD_ENV]) == ("bob", SECRET)
    plan = clone_plan("https://bob:tok@example.com/r", tmp_path / "r", credential=Credential("alice", SECRET))
    assert (plan.env[USER_ENV], plan.env[PASSWORD_ENV]) == ("bob", "tok")


def test_plan_user_without_password_stays_in_url(tmp_path: Path) -> None:
    plan = clone_plan("https://bob@example.com/r", tmp_path / "r", credential=None)
    assert plan.argv[-2] == "https://bob@example.com/r"
    assert "GIT_CONFIG_COUNT" not in plan.env and not plan.has_credential


def test_plan_ssh_keeps_user_drops_password_ignores_credential(tmp_path: Path) -> None:
    plan = clone_plan("ssh://git:oops@host:29418/x.git", tmp_path / "x", credential=Credential("a", SECRET))
    assert plan.argv[-2] == "ssh://git@host:29418/x.git"
    assert "oops" not in " ".join(plan.argv) and "oops" not in plan.render()
    assert PASSWORD_ENV not in plan.env and not plan.has_credential
    plan = clone_plan("git@github.com:org/x.git", tmp_path / "x", credential=None)
    assert plan.argv[-2] == "git@github.com:org/x.git"


def test_plan_file_protocol_only_for_local_repositories(tmp_path: Path) -> None:
    def configs(url: str) -> list[str]:
        argv = clone_plan(url, tmp_path / "d", credential=None).argv
        return [argv[i + 1] for i, a in enumerate(argv[: argv.index("clone")]) if a == "-c"]

    for local in ("/srv/repos/x", "./x", "file:///srv/repos/x", "FILE:///x"):
        assert configs(local) == ["protocol.ext.allow=never", "protocol.file.allow=always"], local
    for remote in ("https://github.com/x/y", "git@github.com:x/y", "ssh://h/x", "git://h/x"):
        assert configs(remote) == ["protocol.ext.allow=never"], remote


def test_plan_submodules_flag(tmp_path: Path) -> None:
    assert "--recurse-submodules" not in clone_plan("/x", tmp_path / "d", credential=None, submodules=False).argv


@pytest.mark.parametrize("url", ["", "  ", " https://h/x", "-uevil", "--upload-pack=evil",
                                 "https://h/x\nfoo", "https://h/\x00x"])
def test_plan_rejects_bad_urls(tmp_path: Path, url: str) -> None:
    with pytest.raises(CloneError):
        clone_plan(url, tmp_path / "d", credential=None)


def test_plan_rejects_newline_in_credential(tmp_path: Path) -> None:
    with pytest.raises(CloneError, match="newline") as err:
        clone_plan("https://h/x", tmp_path / "d", credential=Credential("a", "x\npassword=evil"))
    assert "evil" not in str(err.value)


def test_child_env_appends_after_callers_git_config() -> None:
    base = {"PATH": "/bin", "GIT_DIR": "/elsewhere/.git", "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.sslVerify", "GIT_CONFIG_VALUE_0": "false"}
    additions = {"GIT_CONFIG_COUNT": "2", "GIT_CONFIG_KEY_0": "a.b", "GIT_CONFIG_VALUE_0": "",
                 "GIT_CONFIG_KEY_1": "a.b", "GIT_CONFIG_VALUE_1": "x", "GIT_TERMINAL_PROMPT": "0"}
    env = _child_env(base, additions)
    assert "GIT_DIR" not in env
    assert env["GIT_CONFIG_COUNT"] == "3"
    assert (env["GIT_CONFIG_KEY_0"], env["GIT_CONFIG_VALUE_0"]) == ("http.sslVerify", "false")
    assert (env["GIT_CONFIG_KEY_1"], env["GIT_CONFIG_VALUE_1"]) == ("a.b", "")
    assert (env["GIT_CONFIG_KEY_2"], env["GIT_CONFIG_VALUE_2"]) == ("a.b", "x")
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["PATH"] == "/bin"


# --- the helper, as git sees it ----------------------------------------------------------------


def credential_fill(plan: ClonePlan, host: str) -> subprocess.CompletedProcess[str]:
    env = _child_env(os.environ, plan.env)
    return subprocess.run(["git", "credential", "fill"], input=f"protocol=https\nhost={host}\n\n",
                          env=env, capture_output=True, text=True, timeout=30)


@needs_git
def test_helper_answers_for_its_host_only_and_never_reaches_user_helpers(tmp_path: Path, git_sandbox: Path) -> None:
    git("config", "--global", "credential.helper", "store")  # the user's own helper
    password = "p w*$x 'q' \"d\""  # spaces, glob, dollar and quotes survive the helper
    plan = clone_plan("https://git.example.com/r.git", tmp_path / "r", credential=Credential("alice", password))
    filled = credential_fill(plan, "git.example.com")
    assert filled.returncode == 0, filled.stderr
    assert f"username=alice\npassword={password}\n" in filled.stdout
    # git tells helpers to store a credential that worked: the user's store must not get ours
    env = _child_env(os.environ, plan.env)
    subprocess.run(["git", "credential", "approve"], input=filled.stdout + "\n", env=env, check=True,
                   capture_output=True, text=True, timeout=30)
    assert not (git_sandbox / ".git-credentials").exists()
    # another host (a submodule elsewhere) gets nothing from us
    other = credential_fill(plan, "github.com")
    assert other.returncode != 0 and password not in other.stdout + other.stderr
    assert "terminal prompts disabled" in other.stderr


# --- real clones -------------------------------------------------------------------------------


@needs_git
@pytest.mark.parametrize("as_file_url", [False, True])
def test_clone_local_repository(tmp_path: Path, as_file_url: bool) -> None:
    src = tmp_path / "upstream"
    commit = make_repo(src, {"run.sh": "echo hi\n"})
    url = src.as_uri() if as_file_url else str(src)
    dest = tmp_path / "run" / repo_dir_name(url)
    log = Lines()
    result = run_clone(clone_plan(url, dest, credential=None), deadline_s=60, log=log)
    assert result.commit == commit and result.path == dest
    assert (dest / "run.sh").read_text() == "echo hi\n"
    assert dest.name == "upstream"
    assert log[0].startswith("$ git ") and log[-1] == f"cloned {url} at {commit}"


@needs_git
def test_clone_with_submodule_records_the_superprojects_commit(tmp_path: Path) -> None:
    make_repo(tmp_path / "lib", {"lib.txt": "lib\n"})
    src = tmp_path / "bench"
    make_repo(src, {"run.sh": "echo hi\n"})
    git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(tmp_path / "lib"), "third_party/lib", cwd=src)
    git("commit", "-q", "-m", "add lib", cwd=src)
    commit = git("rev-parse", "HEAD", cwd=src)

    result = run_clone(clone_plan(src.as_uri(), tmp_path / "a" / "bench", credential=None), deadline_s=60, log=Lines())
    assert result.commit == commit  # madengine: rev-parse HEAD of the clone, not of a submodule
    assert (result.path / "third_party" / "lib" / "lib.txt").read_text() == "lib\n"

    plain = run_clone(clone_plan(str(src), tmp_path / "b" / "bench", credential=None, submodules=False),
                      deadline_s=60, log=Lines())
    assert plain.commit == commit and not any((plain.path / "third_party" / "lib").iterdir())


@needs_git
@pytest.mark.skipif(shutil.which("git") is None or git_version() < (2, 38, 1),
                    reason="git before 2.38.1 allows file:// submodules anyway")
def test_without_file_allow_a_local_submodule_fails_with_gits_reason(tmp_path: Path) -> None:
    """What a remote repository with a file:// submodule gets: git's refusal, as the reason."""
    make_repo(tmp_path / "lib", {"lib.txt": "lib\n"})
    src = tmp_path / "bench"
    make_repo(src, {"run.sh": "echo hi\n"})
    git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(tmp_path / "lib"), "lib", cwd=src)
    git("commit", "-q", "-m", "add lib", cwd=src)
    plan = clone_plan(str(src), tmp_path / "run" / "bench", credential=None)
    argv = list(plan.argv)
    i = argv.index("protocol.file.allow=always")
    del argv[i - 1:i + 1]
    plan = ClonePlan(tuple(argv), plan.env, plan.dest, plan.display_url)
    with pytest.raises(CloneError, match="transport 'file' not allowed"):
        run_clone(plan, deadline_s=60, log=Lines())
    assert not plan.dest.exists()  # git left the half-done clone; we do not


@needs_git
def test_missing_repository_fails_with_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    dest = tmp_path / "run" / "nope"
    with pytest.raises(CloneError) as err:
        run_clone(clone_plan(str(missing), dest, credential=None), deadline_s=60, log=Lines())
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"git clone of {missing} failed: fatal: ")
    assert "does not exist" in message or "not found" in message
    assert not dest.exists()


@needs_git
def test_destination_must_be_new_or_empty(tmp_path: Path) -> None:
    src = tmp_path / "up"
    commit = make_repo(src, {"a": "a"})
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(CloneError, match="already exists"):
        run_clone(clone_plan(str(src), busy, credential=None), deadline_s=60, log=Lines())
    assert (busy / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_clone(clone_plan(str(src), empty, credential=None), deadline_s=60, log=Lines()).commit == commit


@pytest.fixture
def hanging_git_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A git:// URL whose connection (a GIT_PROXY_COMMAND) never answers; the proxy's pid is
    written to a file so a test can check the whole group was killed. No network involved."""
    pidfile = tmp_path / "proxy.pid"
    proxy = tmp_path / "proxy.sh"
    proxy.write_text(f"#!/bin/sh\necho $$ > '{pidfile}'\nexec sleep 120\n")
    proxy.chmod(0o755)
    monkeypatch.setenv("GIT_PROXY_COMMAND", str(proxy))
    return "git://never.invalid/x.git", pidfile


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waits for init to reap it; it runs nothing any more
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def assert_gone(pidfile: Path) -> None:
    pid = int(pidfile.read_text())
    end = time.monotonic() + 5
    while time.monotonic() < end:
        if not _alive(pid):
            return
        time.sleep(0.05)
    pytest.fail(f"the proxy command {pid} outlived the clone")


@needs_git
def test_deadline_kills_the_clone_and_its_helpers(tmp_path: Path, hanging_git_url: tuple[str, Path]) -> None:
    url, pidfile = hanging_git_url
    dest = tmp_path / "run" / "x"
    start = time.monotonic()
    with pytest.raises(CloneError, match=r"failed: timed out after 1\.5 s$"):
        run_clone(clone_plan(url, dest, credential=None), deadline_s=1.5, log=Lines())
    assert time.monotonic() - start < 1.5 + 3
    assert pidfile.exists()
    assert_gone(pidfile)
    assert not dest.exists()


@needs_git
def test_cancel_stops_the_clone(tmp_path: Path, hanging_git_url: tuple[str, Path]) -> None:
    url, pidfile = hanging_git_url
    dest = tmp_path / "run" / "x"
    asked_at = time.monotonic() + 0.5
    with pytest.raises(CloneError, match="cancelled"):
        run_clone(clone_plan(url, dest, credential=None), deadline_s=60, log=Lines(),
                  cancel=lambda: time.monotonic() > asked_at and pidfile.exists())
    assert_gone(pidfile)
    assert not dest.exists()


class _AuthServer(http.server.BaseHTTPRequestHandler):
    """Answers every request with 401 and records the Authorization headers it was sent."""

    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.seen.append(self.headers.get("Authorization", ""))
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="bench"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def auth_server() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_AuthServer,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@needs_git
@pytest.mark.parametrize("in_url", [False, True])
def test_credentials_reach_the_server_but_no_text(tmp_path: Path, auth_server: tuple[str, list[str]],
                                                  in_url: bool) -> None:
    base, seen = auth_server
    if in_url:
        host = base.split("://", 1)[1]
        url, credential = f"http://alice:{SECRET}@{host}/org/bench.git", None
    else:
        url, credential = f"{base}/org/bench.git", Credential("alice", SECRET)
    dest = tmp_path / "run" / "bench"
    plan = clone_plan(url, dest, credential=credential)
    log = Lines()
    with pytest.raises(CloneError) as err:
        run_clone(plan, deadline_s=60, log=log)

    # the helper worked: git sent exactly our login
    expected = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
    assert expected in seen
    # and it appears nowhere we show or pass on the command line
    message = str(err.value)
    assert "Authentication failed" in message and "\n" not in message
    for text in (message, "\n".join(log), plan.render(), repr(plan), " ".join(plan.argv), repr(err.value)):
        assert SECRET not in text
        assert "alice" not in text
    assert not dest.exists()


@needs_git
def test_password_echoed_by_git_is_redacted_from_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever git or a helper prints, the password value is masked before it reaches log."""
    src = tmp_path / "up"
    make_repo(src, {"a": "a"})
    hook_dir = tmp_path / "templates" / "hooks"
    hook_dir.mkdir(parents=True)
    hook = hook_dir / "post-checkout"
    # a clone runs post-checkout from the template dir: make it print the password and a URL login
    hook.write_text(f"#!/bin/sh\necho \"leak ${PASSWORD_ENV} https://bob:{SECRET}@h/x\" >&2\n")
    hook.chmod(0o755)
    monkeypatch.setenv("GIT_TEMPLATE_DIR", str(tmp_path / "templates"))
    plan = clone_plan(str(src), tmp_path / "run" / "up", credential=None)
    plan = ClonePlan(plan.argv, {**plan.env, PASSWORD_ENV: SECRET}, plan.dest, plan.display_url, True, (SECRET,))
    log = Lines()
    run_clone(plan, deadline_s=60, log=log)
    leak = [line for line in log if line.startswith("leak ")]
    assert leak == ["leak *** https://***@h/x"]


def test_no_git_binary_is_a_clone_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(CloneError, match="cannot run git"):
        run_clone(clone_plan("/x", tmp_path / "d", credential=None), deadline_s=5, log=Lines())

