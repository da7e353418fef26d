"""The fault matrix: each cell is a real fault during a real run (issue #15, point 1).

Every cell asserts the same things with ``faultkit.check``: each selected model has exactly
one JUnit testcase and one perf.csv row, a failure has a reason, perf.csv parses, and no
process (container, SLURM job) of the run is left behind. Cells that stop or restart a shared
daemon (dockerd, slurmctld, slurmdbd) restore it exactly as .ci/setup-*.sh starts it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .faultkit import Project, check, peak_rss_kib, reason

LOCAL = "--mad-executor=local"
PERF_OK = 'echo "performance: 1 samples_per_second"\n'
BLOCKS = """
    #!/usr/bin/env bash
    sleep 300 &
    touch started
    wait
"""


@pytest.fixture
def project(tmp_path: Path) -> Project:
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


HUGE_LINE_BYTES = 1 << 30  # 1 GiB without a newline; the README's figure


def test_model_prints_a_gigabyte_on_one_line(project: Project) -> None:
    m = project.model("oneline", f"""
        #!/usr/bin/env bash
        head -c {HUGE_LINE_BYTES} /dev/zero | tr '\\0' 'x'
        echo
        echo "performance: 7 samples_per_second"
    """)
    proc = project.start(LOCAL)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, peak_rss_kib(proc.pid))
        time.sleep(0.1)
    rc, out = project.finish()
    assert rc == 0, out
    assert check(project, [m])[m]["performance"] == "7"
    log = project.path / "mad_logs" / f"{m}.log"
    assert log.stat().st_size < 4 << 20  # the line is cut in the log: the disk is safe too
    assert f"{HUGE_LINE_BYTES - (1 << 20)} more characters of it are not logged" in log.read_text()
    assert 0 < peak < 200 * 1024, f"controller peak RSS {peak} KiB"


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
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


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
