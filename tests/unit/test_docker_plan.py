"""The Docker backend without a daemon: plans as data, names, line splitting, error text, and
the executor's fault paths driven by stand-ins for the daemon."""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_madengine.context import Context
from pytest_madengine.executors.base import RunSpec
from pytest_madengine.executors.docker import daemon as ddaemon
from pytest_madengine.executors.docker import executor as dx
from pytest_madengine.executors.docker import images as dimages
from pytest_madengine.executors.docker import plan as dplan
from pytest_madengine.models import Model
from tests.procs import dead_pid

# ------------------------------------------------------------------ the plan, as data (no daemon)


def _spec(tmp_path: Path, *, vendor: str = "AMD", gpus: tuple[int, ...] = (2, 3), devices: bool = True,
          ctx: dict[str, Any] | None = None) -> RunSpec:
    model = Model(name="org/m", source=tmp_path / "models.json", index=0, base_dir=tmp_path, scope=None,
                  dockerfile="docker/m", scripts="scripts/m/run.sh", n_gpus=len(gpus), tags=())
    return RunSpec(model=model, argv=("bash", "run.sh", "--x", "a b"), env={"A": "1"}, run_dir=tmp_path / "run",
                   workspace=tmp_path, timeout=None, gpus=gpus, gpu_vendor=vendor, use_gpu_devices=devices,
                   context=Context(ctx or {}), run_id="r1")


def test_plan_amd_nvidia_and_no_devices(tmp_path: Path) -> None:
    amd = dplan.plan_container(_spec(tmp_path), "img", name="n", keep_alive=False)
    assert amd.devices == ["/dev/kfd:/dev/kfd:rwm", "/dev/dri:/dev/dri:rwm"] and amd.group_add == ["video"]
    assert amd.command == ["bash", "run.sh", "--x", "a b"] and amd.working_dir == "/myworkspace/run"
    assert amd.volumes == {str(tmp_path): {"bind": "/myworkspace", "mode": "rw"}}  # no mount point in the checkout
    assert (amd.network_mode, amd.ipc_mode, amd.user) == ("host", "host", "root")
    assert amd.cap_add == ["SYS_PTRACE"] and amd.security_opt == ["seccomp=unconfined"]
    assert amd.labels[dplan.LABEL_RUN_ID] == "r1" and amd.labels[dplan.LABEL_MODEL] == "org/m"
    nv = dplan.plan_container(_spec(tmp_path, vendor="NVIDIA"), "img", name="n", keep_alive=False)
    assert nv.devices == [] and nv.gpu_request == {"device_ids": ["2", "3"], "capabilities": [["gpu"]]}
    assert nv.environment["CUDA_VISIBLE_DEVICES"] == "0,1"  # renumbered inside the container
    none = dplan.plan_container(_spec(tmp_path, devices=False), "img", name="n", keep_alive=False)
    assert none.devices == [] and none.gpu_request is None and none.group_add == []
    kept = dplan.plan_container(_spec(tmp_path, ctx={"docker_cpus": "0-3"}), "img", name="n", keep_alive=True)
    assert kept.command[:2] == ["bash", "-c"] and kept.command[3:] == ["mad-keep-alive", "bash", "run.sh", "--x", "a b"]
    assert kept.cpuset_cpus == "0-3" and kept.labels[dplan.LABEL_KEEP_ALIVE] == "1"


def test_container_names_are_madengines(tmp_path: Path) -> None:
    assert dplan.container_name("ci-org_model_x.ubuntu.amd") == "container_ci-org_model_x.ubuntu.amd"
    assert dplan.container_name("reg:5000/ns/img:tag@sha256:ab") == "container_reg_5000_ns_img_tag"
    assert dplan.container_name("a b+c") == "container_a_b_c"


def test_a_run_folder_outside_the_checkout_is_mounted_at_its_own_path(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "ws")
    spec = dataclasses.replace(spec, run_dir=tmp_path / "elsewhere" / ".." / "work" / "m")
    plan = dplan.plan_container(spec, "img", name="n", keep_alive=False)
    assert plan.working_dir == str(tmp_path / "work" / "m")
    assert plan.volumes[str(tmp_path / "work" / "m")] == {"bind": str(tmp_path / "work" / "m"), "mode": "rw"}


def test_line_feed_bounds_lines(tmp_path: Path) -> None:
    from pytest_madengine.output import MAX_LINE, LineFeed, OutputSink

    lines: list[str] = []
    feed = LineFeed(OutputSink(tmp_path / "log"), lines.append)
    for chunk in (b"ab", b"c\nde", b"f\n", b"x" * (MAX_LINE + 10), b"\npartial"):
        feed.feed(chunk)
    feed.end()
    assert lines == ["abc\n", "def\n", "x" * MAX_LINE, "x" * 10 + "\n", "partial"]


def test_the_container_log_on_the_docker_host_is_bounded(tmp_path: Path) -> None:
    plan = dplan.plan_container(_spec(tmp_path / "ws"), "img", name="n", keep_alive=False)
    kw = plan.run_kwargs()
    assert kw["log_config"] == {"Type": "json-file", "Config": {"max-size": "16m", "max-file": "2"}}
    build = dplan.BuildPlan("img", "", None, "", {}, "img", "docker.io", prebuilt=True)
    shown = "\n".join(dplan.DockerPlan(_spec(tmp_path / "ws"), build, plan).lines())
    assert "output: attached before start; dockerd's log json-file max-file=2 max-size=16m" in shown


def test_short_reason_digs_out_the_cause() -> None:
    import requests
    from urllib3.exceptions import ProtocolError

    inner = ProtocolError("Connection aborted.", FileNotFoundError(2, "No such file or directory"))
    exc = requests.exceptions.ConnectionError(inner)
    assert ddaemon.short_reason(exc) == "No such file or directory (errno 2)"


# ------------------------------------------------------------------ review fixes, with stand-ins for the daemon


class _FakeApi:
    """The few APIClient calls close(), the orphan sweep and a build make."""

    def __init__(self, containers: list[dict[str, Any]] | None = None, build_gate: threading.Event | None = None):
        self.listed = containers or []
        self.removed: list[str] = []
        self.build_gate = build_gate

    def containers(self, all: bool, filters: dict[str, str]) -> list[dict[str, Any]]:  # noqa: A002
        key, _, value = filters["label"].partition("=")
        return [c for c in self.listed if key in c["Labels"] and (not value or c["Labels"][key] == value)]

    def remove_container(self, cid: str, force: bool, v: bool) -> None:
        self.removed.append(cid)

    def inspect_image(self, image: str) -> dict[str, Any]:
        from docker.errors import ImageNotFound

        raise ImageNotFound(image)

    def build(self, **kw: Any) -> Iterator[dict[str, Any]]:
        yield {"stream": "Step 1/2 : FROM scratch\n"}
        assert self.build_gate is not None
        self.build_gate.wait()  # a build that never ends (until the test lets it go)
        yield {"stream": "never read\n"}


class _FakeClient:
    def __init__(self, api: _FakeApi) -> None:
        self.api = api
        self.pings = 0

    def ping(self) -> bool:
        self.pings += 1
        return True

    def close(self) -> None:
        pass


def _offline_executor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **ctx: Any) -> dx.DockerExecutor:
    from pytest_madengine.errors import ExecutorError
    from pytest_madengine.session import Options

    def no_daemon(self: ddaemon.Daemon) -> Any:
        raise ExecutorError("no daemon in this test")

    with monkeypatch.context() as m:
        m.setattr(ddaemon.Daemon, "connect", no_daemon)
        return dx.DockerExecutor(Options(root=tmp_path, log_dir=tmp_path / "mad_logs", work_dir=tmp_path / "mad_work"),
                                 Context(ctx), "run1")


def test_build_timeout_comes_from_the_context_or_the_model(tmp_path: Path) -> None:
    import dataclasses

    from pytest_madengine.errors import ExecutorError

    spec = _spec(tmp_path)
    assert dplan.build_timeout(spec) == dplan.BUILD_TIMEOUT_S == 3600  # no model timeout
    assert dplan.build_timeout(dataclasses.replace(spec, timeout=3.0)) == 3600  # a short run limit: not the build's
    assert dplan.build_timeout(dataclasses.replace(spec, timeout=7200.0)) == 7200
    assert dplan.build_timeout(_spec(tmp_path, ctx={"docker_build_timeout": "90"})) == 90
    for bad in ("soon", 0, -5, "inf"):
        with pytest.raises(ExecutorError, match="docker_build_timeout' must be a number of seconds > 0"):
            dplan.build_timeout(_spec(tmp_path, ctx={"docker_build_timeout": bad}))


def test_stream_wait_ends_at_the_deadline_or_on_cancel() -> None:
    from pytest_madengine.executors.base import Cancel

    gate = threading.Event()
    stop = threading.Event()
    t0 = time.monotonic()
    with pytest.raises(dimages.StreamTimedOut):
        dimages.in_thread(gate.wait, Cancel(), time.monotonic() + 0.3, stop)
    assert 0.25 < time.monotonic() - t0 < 2 and stop.is_set()
    cancel = Cancel()
    threading.Timer(0.2, cancel.event.set).start()
    with pytest.raises(dimages.Interrupted):
        dimages.in_thread(gate.wait, cancel, time.monotonic() + 60)
    dimages.in_thread(lambda: None, Cancel(), time.monotonic() - 1)  # ended in time: no error
    gate.set()


def test_a_hanging_build_fails_at_its_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_madengine.executors.base import Cancel
    from pytest_madengine.output import OutputSink

    ex = _offline_executor(tmp_path, monkeypatch)
    ctx_dir = tmp_path / "docker"
    ctx_dir.mkdir()
    (ctx_dir / "x.Dockerfile").write_text("FROM scratch\n")
    build = dplan.BuildPlan(image="ci-hang", dockerfile=str(ctx_dir / "x.Dockerfile"), dockerfile_header=None,
                            context_dir=str(ctx_dir), build_args={}, base_docker="", base_registry="")
    gate = threading.Event()
    client = _FakeClient(_FakeApi(build_gate=gate))
    spec = _spec(tmp_path, ctx={"docker_build_timeout": 0.5})
    sink = OutputSink(tmp_path / "m.log")
    log_path = tmp_path / "m.build.log"
    t0 = time.monotonic()
    try:
        with pytest.raises(dimages.BuildFailed, match=r"^image build timed out after 0.5 s \(ci-hang"):
            ex.images._build(client, spec, build, "FROM scratch\n", dimages.context_files(ctx_dir), "d" * 64,
                             log_path, sink, Cancel())
    finally:
        gate.set()
        sink.close()
    assert time.monotonic() - t0 < 5
    text = log_path.read_text()
    assert "Step 1/2" in text and "may go on in the Docker daemon" in text and "never read" not in text


def test_close_reconnects_after_a_blip_and_removes_this_runs_containers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import docker

    ex = _offline_executor(tmp_path, monkeypatch)
    host = socket.gethostname()
    api = _FakeApi([
        {"Id": "mine", "Names": ["/a"], "Labels": {dplan.LABEL_RUN_ID: "run1", dplan.LABEL_OWNER: dplan.owner_label()}},
        {"Id": "kept", "Names": ["/b"], "Labels": {dplan.LABEL_RUN_ID: "run1", dplan.LABEL_OWNER: dplan.owner_label(),
                                                     dplan.LABEL_KEEP_ALIVE: "1"}},
        {"Id": "other-run", "Names": ["/c"], "Labels": {dplan.LABEL_RUN_ID: "run2",
                                                       dplan.LABEL_OWNER: f"{host}:{os.getpid()}"}},
    ])
    fake = _FakeClient(api)
    monkeypatch.setattr(docker, "from_env", lambda **kw: fake)
    ex.daemon._client = None  # dropped when the daemon blipped ...
    ex.daemon._down = (time.monotonic(), "Connection refused (errno 111)")  # ... and that is remembered
    ex.close()
    assert api.removed == ["mine"] and fake.pings == 1 and ex.daemon._client is None


def test_build_context_never_holds_credentials_or_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = tmp_path / "ws"
    for rel in ("credential.json", ".git/config", "docker/x.Dockerfile", "docker/credential.json", "src/a.py",
                "perf.csv"):
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text('{"dockerhub": {"password": "hunter2"}}' if "credential" in rel else "x")
    ex = _offline_executor(ws, monkeypatch)
    sent = dimages.context_files(ws.resolve(), ex.images._excludes(ws.resolve())).files
    assert "credential.json" not in sent and not any(f.startswith(".git") for f in sent)
    assert {"docker/x.Dockerfile", "src/a.py"} <= set(sent) and "perf.csv" not in sent
    sent = dimages.context_files(ws / "docker", ex.images._excludes((ws / "docker").resolve())).files
    assert "credential.json" not in sent and "x.Dockerfile" in sent
    above = dimages.context_files(tmp_path, ex.images._excludes(tmp_path.resolve())).files  # dockercontext above it
    assert "ws/credential.json" not in above and "ws/src/a.py" in above


def test_orphan_sweep_skips_other_pid_namespaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ex = _offline_executor(tmp_path, monkeypatch)
    host, ns, dead = socket.gethostname(), dplan.pid_namespace(), dead_pid()
    assert ns and dplan.owner_label() == f"{host}:{os.getpid()}:{ns}"
    assert dplan.parse_owner(dplan.owner_label()) == (host, os.getpid(), ns)
    assert dplan.parse_owner(f"{host}:12") == (host, 12, None) and dplan.parse_owner("garbage") is None
    owners = {
        "dead-here": f"{host}:{dead}:{ns}",
        "dead-legacy": f"{host}:{dead}",  # written before the namespace was recorded: judged as before
        "other-namespace": f"{host}:{dead}:{int(ns) + 1}",  # a pytest in a container named like the host
        "alive-here": dplan.owner_label(),
        "other-host": f"elsewhere-{host}:{dead}:{ns}",
    }
    api = _FakeApi([{"Id": cid, "Names": [f"/{cid}"], "Labels": {dplan.LABEL_OWNER: owner}}
                    for cid, owner in owners.items()])
    ex.daemon._client = _FakeClient(api)
    assert sorted(ex.daemon.sweep_orphans()) == ["dead-here", "dead-legacy"]
    assert sorted(api.removed) == ["dead-here", "dead-legacy"]


def test_a_stream_broken_by_a_dying_daemon_is_a_connection_error() -> None:
    import http.client

    import urllib3
    from docker.errors import APIError

    from pytest_madengine.executors.docker import daemon

    broken = urllib3.exceptions.ProtocolError("Response ended prematurely", http.client.IncompleteRead(b""))
    assert daemon.is_connection_error(broken) and daemon.is_connection_error(http.client.IncompleteRead(b""))
    assert not daemon.is_connection_error(APIError("no such image")) and not daemon.is_connection_error(ValueError())


@pytest.mark.parametrize(("message", "about_credentials"), [
    ("unauthorized: authentication required", True),
    ("Head http://127.0.0.1:5001/v2/x/manifests/1: no basic auth credentials", True),
    ("pull access denied for x, repository does not exist or may require 'docker login'", True),
    ("dial tcp 127.0.0.1:42225: connect: connection refused", False),
    ("manifest for x:1 not found: manifest unknown", False),
])
def test_the_credentials_hint_only_for_a_refusal_about_credentials(message: str, about_credentials: bool) -> None:
    assert ddaemon.refused_for_credentials(message) is about_credentials
