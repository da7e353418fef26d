"""The fault matrix: each cell is a real fault during a real run (issue #15, point 1).

Every cell asserts the same things with ``faultkit.check``: each selected model has exactly
one JUnit testcase and one perf.csv row, a failure has a reason, perf.csv parses, and no
process (container, SLURM job) of the run is left behind. Cells that stop or restart a shared
daemon (dockerd, slurmctld, slurmdbd) restore it exactly as .ci/setup-*.sh starts it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.multinode_helpers import unavailable

from .faultkit import ROOT, CuttingProxy, Project, check, junit_cases, peak_rss_kib, reason

LOCAL = "--mad-executor=local"
PERF_OK = 'echo "performance: 1 samples_per_second"\n'
BLOCKS = """
    #!/usr/bin/env bash
    sleep 300 &
    touch started
    wait
"""


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    p = Project(tmp_path)
    yield p
    p.stop()


# ------------------------------------------------------------------ signals to pytest (local)

SIGNALS = {"sigterm": (signal.SIGTERM,), "sigint": (signal.SIGINT,), "double-sigint": (signal.SIGINT, signal.SIGINT)}


@pytest.mark.parametrize("how", SIGNALS)
def test_signal_during_run(project: Project, how: str) -> None:
    models = [project.model("first", BLOCKS), project.model("second", PERF_OK), project.model("third", PERF_OK)]
    project.start(LOCAL)
    project.wait_for(project.started("first"), why="first started")
    project.signal(*SIGNALS[how])
    rc, out = project.finish()
    assert rc != 0, out
    rows = check(project, models)
    assert {r["status"] for r in rows.values()} == {"FAILURE"}
    assert "interrupted" in reason(project, models[0])
    assert "not run: the session was interrupted" in reason(project, models[2])


@pytest.mark.parametrize("how", SIGNALS)
def test_signal_during_gpu_wait(project: Project, how: str) -> None:
    # Two pytest processes share the virtual pool "0": the second waits for the first's GPU.
    holder_proj = Project(project.path / "holder", project.token)
    holder_proj.path.mkdir()
    holder = holder_proj.model("holder", BLOCKS, n_gpus="1")
    waiter = project.model("waiter", PERF_OK, n_gpus="1")
    work = str(project.path / "shared_work")
    holder_proj.start(LOCAL, "--mad-gpus=0", f"--mad-work-dir={work}")
    try:
        holder_proj.wait_for(lambda: (Path(work) / holder / "started").exists(), why="holder started")
        project.start(LOCAL, "--mad-gpus=0", f"--mad-work-dir={work}")
        log = project.path / "mad_logs" / f"{waiter}.log"
        project.wait_for(lambda: log.exists() and "waiting for 1 GPUs" in log.read_text(), why="waiting")
        project.signal(*SIGNALS[how])
        rc, out = project.finish()
    finally:
        holder_proj.signal(signal.SIGINT)
        holder_proj.finish()
    assert rc != 0, out
    rows = check(project, [waiter])
    assert rows[waiter]["status"] == "FAILURE" and "interrupted" in reason(project, waiter)
    check(holder_proj, [holder])


# ------------------------------------------------------------------ xdist worker SIGKILL mid-model

VICTIM = """
    #!/usr/bin/env bash
    pid=$PPID  # the xdist worker running this script
    while [ "$pid" -gt 1 ] && ! tr '\\0' ' ' < /proc/$pid/cmdline | grep -q python; do
        pid=$(ps -o ppid= -p "$pid" | tr -d ' ')
    done
    echo "$pid" > worker.pid
    sleep 300 &
    touch started
    wait
"""


def test_xdist_worker_sigkilled_mid_model(project: Project) -> None:
    victim = project.model("victim", VICTIM)
    others = [project.model(f"other{i}", PERF_OK) for i in range(3)]
    project.start(LOCAL, "-n", "2")
    project.wait_for(project.started("victim"), why="victim started")
    worker = int((project.path / "mad_work" / victim / "worker.pid").read_text())
    os.kill(worker, signal.SIGKILL)
    rc, out = project.finish()
    assert rc == 1, out
    rows = check(project, [victim, *others])
    assert rows[victim]["status"] == "FAILURE" and all(rows[o]["status"] == "SUCCESS" for o in others)


# ------------------------------------------------------------------ hostile models (local)


def test_model_forks_a_thousand_processes(project: Project) -> None:
    m = project.model("forker", """
        #!/usr/bin/env bash
        for i in $(seq 1000); do sleep 300 & done
        echo "performance: 1 samples_per_second"
    """)
    project.start(LOCAL)
    rc, out = project.finish()
    assert rc == 0, out
    assert check(project, [m])[m]["status"] == "SUCCESS"


HUGE_LINE_MIB = 10 * 1024  # 10 GiB without a newline; the README's figure
# The model writes it from one 1 MiB buffer: `head -c | tr` manages ~0.6 GiB/s here, slower than our reader.
WRITE_HUGE_LINE = f"import os; b = b'x' * (1 << 20); [os.write(1, b) for _ in range({HUGE_LINE_MIB})]"


def test_model_prints_ten_gigabytes_on_one_line(project: Project) -> None:
    m = project.model("oneline", f"""
        #!/usr/bin/env bash
        python3 -c "{WRITE_HUGE_LINE}"
        echo
        echo "performance: 7 samples_per_second"
    """)
    t0 = time.monotonic()
    proc = project.start(LOCAL)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, peak_rss_kib(proc.pid))
        time.sleep(0.1)
    took = time.monotonic() - t0
    rc, out = project.finish()
    assert rc == 0, out
    assert check(project, [m])[m]["performance"] == "7"
    log = project.path / "mad_logs" / f"{m}.log"
    assert log.stat().st_size < 4 << 20  # the line is cut in the log: the disk is safe too
    assert f"{(HUGE_LINE_MIB - 1) << 20} more characters of it are not logged" in log.read_text()
    assert 0 < peak < 200 * 1024, f"controller peak RSS {peak} KiB"
    print(f"10 GiB on one line: {took:.1f} s, {HUGE_LINE_MIB / 1024 / took:.2f} GiB/s end to end; peak RSS {peak} KiB")


def test_model_closes_stdout_and_keeps_running(project: Project) -> None:
    m = project.model("mute", """
        #!/usr/bin/env bash
        echo "performance: 1 samples_per_second"
        exec >&- 2>&-
        sleep 300
    """, timeout=3)
    project.start(LOCAL)
    rc, out = project.finish()
    assert rc == 1, out
    check(project, [m])
    assert "timed out after 3 s" in reason(project, m)


@pytest.fixture
def small_fs(tmp_path: Path) -> Path:
    """A 2 MiB tmpfs, unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        unavailable(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_perf_csv_file_system_full(project: Project, small_fs: Path) -> None:
    # A 6 kB row: the second one needs a new page, which a full tmpfs refuses half-way through.
    first = project.model("first", PERF_OK, args="--pad " + "x" * 6000)
    project.start(LOCAL, f"--mad-perf-csv={small_fs / 'perf.csv'}")
    assert project.finish()[0] == 0
    before = (small_fs / "perf.csv").read_bytes()
    fd = os.open(small_fs / "filler", os.O_WRONLY | os.O_CREAT)  # the rest of the file system
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    project.start(LOCAL, f"--mad-perf-csv={small_fs / 'perf.csv'}")
    rc, out = project.finish()
    assert rc == 1, out  # a row that could not be written fails the run, though the model passed
    assert f"madengine: cannot write the perf.csv row of {first} to {small_fs / 'perf.csv'}: No space left" in out
    assert (small_fs / "perf.csv").read_bytes() == before  # no half row
    assert "INTERNALERROR" not in out and len(junit_cases(project.path / "j.xml")[first]) == 1


def test_log_file_system_full(project: Project, small_fs: Path) -> None:
    flood = project.model("flood", 'seq 1 2000000\necho "performance: 1 samples_per_second"\n')
    after = project.model("after", PERF_OK)
    t0 = time.monotonic()
    project.start(LOCAL, f"--mad-log-dir={small_fs}")
    rc, out = project.finish()
    assert time.monotonic() - t0 < 60  # the model was not left blocked on its output until its timeout
    assert rc == 1, out
    rows = check(project, [flood, after])
    assert "No space left on device" in reason(project, flood) and rows[flood]["status"] == "FAILURE"
    assert "Traceback" not in out


# ------------------------------------------------------------------ Docker: daemon killed, Ctrl-C in a build

BASE = os.environ.get("MAD_TEST_BASE_IMAGE", "mad-base:bookworm")
DOCKER_CTX = "--mad-context=" + json.dumps({"docker_build_arg": {"BASE_DOCKER": BASE}})


@pytest.fixture
def docker_client() -> Iterator[Any]:
    try:
        import docker

        c = docker.DockerClient.from_env(timeout=60)
        c.ping()
        c.images.get(BASE)
    except Exception as exc:  # noqa: BLE001
        unavailable(f"no Docker daemon with {BASE} ({exc}); run .ci/setup-docker.sh")
    yield c
    c.close()


class DockerCell:
    """A project for the docker executor whose images and containers carry the token."""

    def __init__(self, project: Project, client: Any) -> None:
        self.project, self.client = project, client
        self.dockerfile("base", "")

    def dockerfile(self, stem: str, body: str) -> str:
        path = self.project.path / "docker" / f"{stem}.ubuntu.any.Dockerfile"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# CONTEXT {{'guest_os': 'UBUNTU'}}\nARG BASE_DOCKER\nFROM ${{BASE_DOCKER}}\n{body}"
                        f"ENV MAD_E2E_TOKEN={self.project.token}\n")
        return f"docker/{stem}"

    def containers(self) -> list[str]:
        from pytest_madengine.executors.docker import plan as dplan

        try:
            found = self.client.containers.list(all=True, filters={"label": dplan.LABEL_MODEL}, ignore_removed=True)
        except Exception as exc:  # noqa: BLE001
            return [f"cannot list containers: {exc}"]
        return [f"{c.name} ({c.status})" for c in found if self.project.token in c.labels.get(dplan.LABEL_MODEL, "")]

    def build_containers(self) -> list[str]:
        """Intermediate containers of a legacy build of ours (a RUN step that was cut short)."""
        out = []
        for c in self.client.containers.list(all=True, ignore_removed=True):
            env = (c.attrs.get("Config") or {}).get("Env") or []
            if f"MAD_E2E_TOKEN={self.project.token}" in env:
                out.append(c.name)
        return out

    def cleanup(self) -> None:
        import docker

        try:
            c = docker.DockerClient.from_env(timeout=60)
            for x in c.containers.list(all=True, ignore_removed=True):
                if self.project.token in x.name or self.project.token in json.dumps(x.labels):
                    x.remove(force=True)
            for image in c.images.list():
                if any(self.project.token in t for t in image.tags):
                    c.images.remove(image.id, force=True)
        except Exception:  # noqa: BLE001 - best effort: the daemon may be down
            pass


@pytest.fixture
def cell(project: Project, docker_client: Any) -> Iterator[DockerCell]:
    c = DockerCell(project, docker_client)
    yield c
    project.stop()
    c.cleanup()


def dockerd_pid() -> int:
    done = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True)
    pids = [int(p) for p in done.stdout.split()]
    if len(pids) != 1:
        unavailable(f"want exactly one dockerd on this host to kill and restart, found {pids}")
    return pids[0]


def restore_docker() -> None:
    """As CI starts it: .ci/setup-docker.sh (idempotent), which waits until `docker info` answers
    (60 s; a daemon cleaning up after a SIGKILL can take longer, so a second call waits again)."""
    for _ in range(2):
        done = subprocess.run(["bash", str(ROOT / ".ci" / "setup-docker.sh")], capture_output=True, text=True,
                              timeout=300)
        if done.returncode == 0:
            return
    raise AssertionError(done.stdout + done.stderr)


@pytest.fixture
def killable_dockerd(docker_client: Any) -> Iterator[Callable[[], None]]:
    """SIGKILLs the Docker daemon on demand; always restarted afterwards."""
    pid = dockerd_pid()
    killed = []

    def kill() -> None:
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        deadline = time.monotonic() + 30  # gone (reaped), so setup-docker.sh's pgrep starts a new one
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    try:
        yield kill
    finally:
        if killed:
            restore_docker()


SLOW_BUILD = "RUN echo building-slowly && sleep 60\n"


@pytest.mark.parametrize("phase", ["build", "run"])
def test_docker_daemon_sigkilled(cell: DockerCell, killable_dockerd: Callable[[], None], phase: str) -> None:
    p = cell.project
    dockerfile = cell.dockerfile("slow", SLOW_BUILD) if phase == "build" else "docker/base"
    m = p.model("victim", 'touch started\nsleep 120\necho "performance: 1 x"\n', dockerfile=dockerfile)
    later = p.model("later", PERF_OK, dockerfile="docker/base")
    p.start("--mad-executor=docker", DOCKER_CTX)
    if phase == "build":
        build_log = p.path / "mad_logs" / f"{m}.build.log"
        p.wait_for(lambda: build_log.exists() and "building-slowly" in build_log.read_text(), why="build step")
    else:
        p.wait_for(lambda: any("running" in c for c in cell.containers()), timeout=120, why="container running")
    killable_dockerd()
    rc, out = p.finish(timeout=120)
    restore_docker()  # the restart ends the containers the dead daemon left running
    assert rc == 1, out
    check(p, [m, later])
    assert "Docker daemon" in reason(p, m) and "Traceback" not in out
    # A container the dead daemon still held is ended by its restart and removed by the next run's sweep.
    if cell.containers():
        sweep = Project(p.path / "next", p.token)
        sweep.path.mkdir()
        import shutil

        shutil.copytree(p.path / "docker", sweep.path / "docker")
        sweep.model("next", PERF_OK, dockerfile="docker/base")
        sweep.start("--mad-executor=docker", DOCKER_CTX)
        assert sweep.finish(timeout=180)[0] == 0, sweep.out()
    assert cell.containers() == [] and cell.build_containers() == []


@pytest.mark.parametrize("how", SIGNALS)
def test_signal_during_docker_build(cell: DockerCell, how: str) -> None:
    p = cell.project
    m = p.model("slowbuild", PERF_OK, dockerfile=cell.dockerfile("slow", SLOW_BUILD))
    other = p.model("other", PERF_OK, dockerfile="docker/base")
    p.start("--mad-executor=docker", DOCKER_CTX)
    build_log = p.path / "mad_logs" / f"{m}.build.log"
    p.wait_for(lambda: build_log.exists() and "building-slowly" in build_log.read_text(), why="build step")
    t0 = time.monotonic()
    p.signal(*SIGNALS[how])
    rc, out = p.finish(timeout=120)
    assert time.monotonic() - t0 < 45, out  # not the build's 60 s
    assert rc != 0, out
    check(p, [m, other], leftovers=cell.containers)
    assert "interrupted" in reason(p, m)
    deadline = time.monotonic() + 30  # the daemon removes a cancelled build's container
    while cell.build_containers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert cell.build_containers() == []


# ------------------------------------------------------------------ SLURM: Ctrl-C in the queue, daemons restarted

PARTITION = os.environ.get("MAD_TEST_SLURM_PARTITION", "debug")


def sh(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def cluster() -> None:
    import shutil

    if shutil.which("sbatch") is None:
        unavailable("SLURM is not installed; run .ci/setup-slurm.sh")
    if sh("scontrol", "ping").returncode != 0 or sh("sacct", "-n", "-X", "-S", "now-1minutes").returncode != 0:
        unavailable("the SLURM cluster does not answer; run .ci/setup-slurm.sh")


def slurm_args(**extra: object) -> str:
    return "--mad-context=" + json.dumps({"slurm_args": {"PARTITION": PARTITION, "TIME": "2", **extra}})


def our_jobs(token: str) -> Callable[[], list[str]]:
    def jobs() -> list[str]:
        out = sh("squeue", "-h", "-o", "%i %j %T").stdout.split("\n")
        return [line for line in out if token in line]
    return jobs


def restore_slurm() -> None:
    """As CI starts it: .ci/setup-slurm.sh (idempotent), which waits for sinfo and sacct."""
    done = sh("bash", str(ROOT / ".ci" / "setup-slurm.sh"), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("how", SIGNALS)
def test_signal_during_slurm_queue_wait(project: Project, cluster: None, how: str) -> None:
    # Every node is taken by a job of our own, so the run's job waits in the queue.
    hold = sh("sbatch", "--parsable", "-p", PARTITION, "-N", "4", "--exclusive", f"--job-name=hold_{project.token}",
              "-t", "5", "--output=/dev/null", "--wrap", "sleep 300")
    assert hold.returncode == 0, hold.stderr
    try:
        m = project.model("queued", PERF_OK)
        project.start(slurm_args())
        jobs = our_jobs(project.token)
        project.wait_for(lambda: any(m in j and "PENDING" in j for j in jobs()), timeout=60, why="job pending")
        project.signal(*SIGNALS[how])
        rc, out = project.finish(timeout=90)
    finally:
        sh("scancel", hold.stdout.strip())
    assert rc != 0, out
    check(project, [m], leftovers=lambda: [j for j in our_jobs(project.token)() if "hold_" not in j])
    assert "interrupted" in reason(project, m)


def _stop(pidfile: str) -> None:
    pid = int(Path(pidfile).read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, f"{pidfile} did not stop"
        time.sleep(0.1)


# slurmdbd alone: slurmctld keeps the job, but sacct (how the executor learns a job's end) fails
# until slurmdbd is back; both: the controller too, its state reloaded from StateSaveLocation.
RESTARTS = {"slurmctld+slurmdbd": ("slurmctld", "slurmdbd"), "slurmdbd": ("slurmdbd",)}


@pytest.mark.parametrize("daemons", RESTARTS)
def test_slurm_daemons_restarted_mid_job(project: Project, cluster: None, daemons: str) -> None:
    started = project.path / "started"
    m = project.model("steady", f"touch {started}\nsleep 6\n{PERF_OK}")
    other = project.model("other", PERF_OK)
    project.start(slurm_args())
    project.wait_for(started.exists, timeout=90, why="job started")
    try:
        for daemon in RESTARTS[daemons]:
            _stop(f"/run/slurm/{daemon}.pid")
        time.sleep(8)  # past the job's end: its result must wait for the daemons
    finally:
        restore_slurm()
    rc, out = project.finish(timeout=240)
    rows = check(project, [m, other], leftovers=our_jobs(project.token))
    assert rc == 0 and rows[m]["status"] == rows[other]["status"] == "SUCCESS", out


# ------------------------------------------------------------------ multi-node: a peer killed after joining


def test_rendezvous_peer_killed_after_joining(project: Project) -> None:
    from tests.e2e.multinode_helpers import Nodes, free_port_pair, node_context

    marks = project.path / "marks"
    marks.mkdir()
    m = project.model("pair", f"""
        #!/usr/bin/env bash
        touch {marks}/started-$NODE_RANK
        sleep 4
        echo "performance: 1 samples_per_second"
    """)
    port = free_port_pair()
    nodes = Nodes(project.path, tags="fault")
    env = {"FAULT_TOKEN": project.token}
    n0 = nodes.start(0, node_context(0, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, rendezvous_timeout=20), env=env)
    n1 = nodes.start(1, node_context(1, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, rendezvous_timeout=20), env=env)
    try:
        deadline = time.monotonic() + 60
        while not (marks / "started-1").exists():  # node 1 is past the barrier: its model runs
            assert time.monotonic() < deadline and n1.proc.poll() is None, n1.proc.communicate()[0]
            time.sleep(0.1)
        n1.proc.kill()
        t0 = time.monotonic()
        out0, _ = n0.proc.communicate(timeout=120)
    finally:
        nodes.kill()
    assert time.monotonic() - t0 < 60, out0  # within the rendezvous timeout, not forever
    node0 = Project(n0.dir, project.token)
    (n0.dir / "out.txt").write_text(out0)
    check(node0, [m], perf="perf.csv", junit="junit.xml")
    # As for a peer that fails: node 0 keeps its own verdict, and says which peer it lost.
    props = {p.get("name"): p.get("value") for p in junit_cases(n0.dir / "junit.xml")[m][0].iter("property")}
    assert props["peers_passed"] == "0/1", props
    assert "node 1 did not report its result: its connection ended" in props["warning"], props


# ------------------------------------------------------------------ a registry down when the base image is pulled


def serve_registry(folder: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """A throwaway docker-registry (as .ci/setup-docker.sh runs them) on a free port, storing in
    ``folder``; never the shared ones on 5000/5001."""
    import shutil
    import socket

    if shutil.which("docker-registry") is None:
        unavailable("docker-registry is missing (apt-get install docker-registry)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{s.getsockname()[1]}"
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "config.yml").write_text(f"version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: "
                                       f"{{rootdirectory: {folder / 'data'}}}\nhttp: {{addr: {addr}}}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(folder / "config.yml")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while sh("curl", "-s", "-o", "/dev/null", f"http://{addr}/v2/").returncode != 0:
        if time.monotonic() > deadline or proc.poll() is not None:
            stop_registry(proc)
            raise AssertionError("the throwaway registry did not start")
        time.sleep(0.2)
    return addr, proc


def stop_registry(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture
def own_registry(tmp_path: Path, docker_client: Any) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A throwaway registry holding the base image."""
    addr, proc = serve_registry(tmp_path / "registry")
    ref = f"{addr}/mad-fault-base:latest"
    try:
        docker_client.images.get(BASE).tag(ref)
        docker_client.images.push(ref)
        docker_client.images.remove(ref)
        yield ref, proc
    finally:
        stop_registry(proc)
        try:
            docker_client.images.remove(ref, force=True)
        except Exception:  # noqa: BLE001
            pass


def test_registry_down_when_the_base_image_is_pulled(cell: DockerCell, own_registry: tuple[str, Any]) -> None:
    ref, registry = own_registry
    os.killpg(registry.pid, signal.SIGKILL)
    registry.wait()
    p = cell.project
    m = p.model("unpullable", PERF_OK, dockerfile="docker/base")
    p.start("--mad-executor=docker", "--mad-context=" + json.dumps({"docker_build_arg": {"BASE_DOCKER": ref}}))
    rc, out = p.finish(timeout=180)
    assert rc == 1, out
    check(p, [m], leftovers=cell.containers)
    assert ref.split("/")[0] in reason(p, m) and "Traceback" not in out, reason(p, m)


# ------------------------------------------------------------------ a registry that dies in the middle of a pull or push

BIG_LAYER_MIB = 128  # random, so compression leaves it as big: the cut below lands well inside it
CUT_AFTER = 16 << 20
BIG_REPO = "mad-fault-big"


def _our_registry_tags(client: Any, *needles: str) -> list[str]:
    return [t for image in client.images.list() for t in image.tags if any(n in t for n in needles)]


@pytest.fixture(scope="module")
def big_image_storage() -> tuple[Path, str]:
    """A registry storage folder holding ``mad-fault-big:<tag>``: the base image plus a layer of
    random bytes. Built and pushed once per machine (kept in MAD_CI_STATE, keyed by the base
    image's id); the image itself is not kept locally, so a pull must fetch every byte of it."""
    import docker

    try:
        client = docker.DockerClient.from_env(timeout=120)
        base_id = client.images.get(BASE).id.split(":")[-1][:12]
    except Exception as exc:  # noqa: BLE001
        unavailable(f"no Docker daemon with {BASE} ({exc}); run .ci/setup-docker.sh")
    tag = f"{BIG_LAYER_MIB}m-{base_id}"
    folder = Path(os.environ.get("MAD_CI_STATE", "/var/lib/mad-ci")) / "fault-registry-big"
    link = folder / "data/docker/registry/v2/repositories" / BIG_REPO / "_manifests/tags" / tag / "current/link"
    if not link.exists():  # written last by the registry, after every blob
        import io
        import shutil

        shutil.rmtree(folder, ignore_errors=True)  # an image of an older base: one copy on disk, not one per base
        addr, proc = serve_registry(folder)
        ref = f"{addr}/{BIG_REPO}:{tag}"
        dockerfile = f"FROM {BASE}\nRUN head -c {BIG_LAYER_MIB}M /dev/urandom > /big.bin\n"
        try:
            client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=ref, rm=True, forcerm=True)
            client.images.push(ref)
        finally:
            stop_registry(proc)
            try:
                client.images.remove(ref, force=True)
            except Exception:  # noqa: BLE001
                pass
        assert link.exists(), f"the push of {ref} did not land in {folder}"
    client.close()
    return folder, tag


@pytest.fixture
def dying_registry() -> Iterator[Callable[[Path, str], CuttingProxy]]:
    """dying(folder, direction): a registry on ``folder`` behind a proxy that SIGKILLs it and
    drops every connection once CUT_AFTER bytes went that way; both stopped afterwards."""
    made: list[tuple[CuttingProxy, subprocess.Popen[bytes]]] = []

    def dying(folder: Path, direction: str) -> CuttingProxy:
        addr, proc = serve_registry(folder)
        proxy = CuttingProxy(addr, CUT_AFTER, direction, lambda: stop_registry(proc))
        made.append((proxy, proc))
        return proxy

    yield dying
    for proxy, proc in made:
        proxy.kill()
        stop_registry(proc)


def test_registry_dies_mid_pull_and_mid_push(cell: DockerCell, tmp_path: Path, big_image_storage: tuple[Path, str],
                                             dying_registry: Callable[[Path, str], CuttingProxy]) -> None:
    """Two faults, two runs at the same time: each ends only when the Docker daemon gives up
    (5 tries, 5 to 20 s apart: ~50-75 s), nearly all of it waiting, so one wait serves both.
    Pull: ``--mad-use-image`` of an image whose random 128 MiB layer is not on this host; the
    registry dies 16 MiB into it. Push: ``--mad-build-only --mad-registry`` of a built image
    with such a layer; the registry dies after 16 MiB of it were sent."""
    folder, tag = big_image_storage
    puller = cell.project
    pull_proxy = dying_registry(folder, "down")
    ref = f"{pull_proxy.addr}/{BIG_REPO}:{tag}"
    pulled = puller.model("pulled", PERF_OK)

    pusher = Project(tmp_path / "pusher", puller.token)
    pusher.path.mkdir()
    push_cell = DockerCell(pusher, cell.client)
    push_proxy = dying_registry(tmp_path / "push-registry", "up")
    pushed = pusher.model("pushed", PERF_OK, dockerfile=push_cell.dockerfile(
        "big", f"RUN head -c {BIG_LAYER_MIB}M /dev/urandom > /big.bin\n"))

    t0 = time.monotonic()
    try:
        pusher.start("--mad-executor=docker", DOCKER_CTX, "--mad-build-only", "--mad-build-perf-rows",
                     f"--mad-registry={push_proxy.addr}")
        puller.start("--mad-executor=docker", f"--mad-use-image={ref}")
        pull_rc, pull_out = puller.finish(timeout=240)
        push_rc, push_out = pusher.finish(timeout=240)
    finally:
        pusher.stop()
    took = time.monotonic() - t0

    assert pull_proxy.cut.is_set(), f"the pull never got {CUT_AFTER} bytes in\n{pull_out[-3000:]}"
    assert pull_rc == 1, pull_out
    check(puller, [pulled], leftovers=lambda: cell.containers() + _our_registry_tags(cell.client, pull_proxy.addr, BIG_REPO))
    why = reason(puller, pulled)
    assert f"cannot pull image {ref}: " in why and "connection refused" in why, why
    assert "no credentials" not in why and "Traceback" not in pull_out, why  # not an auth problem

    assert push_proxy.cut.is_set(), f"the push never sent {CUT_AFTER} bytes\n{push_out[-3000:]}"
    assert push_rc == 1, push_out
    check(pusher, [pushed], leftovers=lambda: push_cell.containers() + push_cell.build_containers()
          + _our_registry_tags(cell.client, push_proxy.addr))
    why = reason(pusher, pushed)
    assert f"push of {push_proxy.addr}/" in why and "failed" in why and "Traceback" not in push_out, why
    doc = json.loads((pusher.path / "build_manifest.json").read_text())
    assert doc["built_images"] == {} and doc["summary"]["failed_pushes"] == 1, doc
    print(f"registry killed after {pull_proxy.passed >> 20} MiB of the pull and {push_proxy.passed >> 20} MiB of the "
          f"push; both items failed within {took:.0f} s")


# ------------------------------------------------------------------ one huge line: Docker, SLURM


def _watch_peak(proc: subprocess.Popen[bytes], also: Callable[[], None] = lambda: None) -> tuple[float, int]:
    """(seconds until pytest exits, its peak RSS in KiB), calling ``also`` every 0.1 s."""
    t0, peak = time.monotonic(), 0
    while proc.poll() is None:
        peak = max(peak, peak_rss_kib(proc.pid))
        also()
        time.sleep(0.1)
    return time.monotonic() - t0, peak


def _huge_line_model(p: Project, short: str, mib: int, **fields: Any) -> str:
    write = f"import os; b = b'x' * (1 << 20); [os.write(1, b) for _ in range({mib})]"
    return p.model(short, f"""
        #!/usr/bin/env bash
        python3 -c "{write}"
        echo
        echo "performance: 7 samples_per_second"
    """, **fields)


def _assert_cut_log(p: Project, m: str, mib: int) -> None:
    log = p.path / "mad_logs" / f"{m}.log"
    assert log.stat().st_size < 4 << 20  # the line is cut in the log
    assert f"{(mib - 1) << 20} more characters of it are not logged" in log.read_text()


DOCKER_HUGE_MIB = 2 * 1024  # dockerd passes ~0.15 GiB/s here (its json-file log writes every byte)


def test_docker_model_prints_gigabytes_on_one_line(cell: DockerCell) -> None:
    p = cell.project
    m = _huge_line_model(p, "dockerline", DOCKER_HUGE_MIB, dockerfile="docker/base")
    proc = p.start("--mad-executor=docker", DOCKER_CTX)
    log_peak = 0

    def dockerd_log() -> None:  # dockerd's own copy of the output, on the Docker host's disk
        nonlocal log_peak
        for c in cell.client.api.containers(all=True, filters={"label": f"org.pytest-madengine.model={m}"}):
            folder = Path(cell.client.api.inspect_container(c["Id"])["LogPath"]).parent
            log_peak = max(log_peak, sum(f.stat().st_size for f in folder.glob("*-json.log*")))

    took, peak = _watch_peak(proc, lambda: _ignore_gone(dockerd_log))
    rc, out = p.finish()
    assert rc == 0, out
    assert check(p, [m], leftovers=cell.containers)[m]["performance"] == "7"
    _assert_cut_log(p, m, DOCKER_HUGE_MIB)
    assert 0 < peak < 200 * 1024, f"controller peak RSS {peak} KiB"
    assert 0 < log_peak <= 40 << 20, f"dockerd's log reached {log_peak} bytes"  # json-file 2 x 16m
    print(f"docker, {DOCKER_HUGE_MIB} MiB on one line: {took:.1f} s end to end "
          f"({DOCKER_HUGE_MIB / 1024 / took:.2f} GiB/s, build included); peak RSS {peak} KiB; "
          f"dockerd's log at most {log_peak >> 20} MiB")


def _ignore_gone(call: Callable[[], None]) -> None:
    try:
        call()
    except Exception:  # noqa: BLE001 - the container or its log went away between two looks
        pass


SLURM_HUGE_MIB = 1024
# slurm_args: the job's output is copied into the log; the `slurm` key (deploy) also reads each
# node's output for its results (gather), which held the whole file in memory before.
SLURM_WAYS = {"slurm_args": slurm_args(),
              "slurm-key": "--mad-context=" + json.dumps({"slurm": {"partition": PARTITION, "time": "2",
                                                                    "exclusive": False}})}


@pytest.mark.parametrize("way", SLURM_WAYS)
def test_slurm_job_prints_a_gigabyte_on_one_line(project: Project, cluster: None, way: str) -> None:
    m = _huge_line_model(project, "slurmline", SLURM_HUGE_MIB)
    proc = project.start(SLURM_WAYS[way])
    took, peak = _watch_peak(proc)
    rc, out = project.finish()
    assert rc == 0, out
    assert check(project, [m], leftovers=our_jobs(project.token))[m]["performance"] == "7"
    _assert_cut_log(project, m, SLURM_HUGE_MIB)
    assert 0 < peak < 200 * 1024, f"controller peak RSS {peak} KiB"
    print(f"slurm ({way}), {SLURM_HUGE_MIB} MiB on one line: {took:.1f} s end to end; peak RSS {peak} KiB")
