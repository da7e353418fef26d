"""Multi-node from one shared checkout (the usual NFS setup: every node runs pytest in the
same folder): run folders and logs are per node, and a node that fails before the meeting
tells the others at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ModelRepo
from .multinode_helpers import REPO_ROOT, free_port_pair

pytestmark = pytest.mark.multinode

SCRIPT = """
    #!/usr/bin/env bash
    echo "node $NODE_RANK in $(pwd)"
    if [ "$NODE_RANK" = 0 ]; then echo "performance: 5 samples_per_second"; fi
"""


def start(path: Path, rank: int, port: int, *extra: str) -> subprocess.Popen[str]:
    ctx = {"multi_node_args": {"NNODES": 2, "NODE_RANK": rank, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
           "rendezvous_timeout": 90}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--mad-tags=t", "--mad-executor=local",
            f"--mad-context={json.dumps(ctx)}", "-rA", *extra]
    return subprocess.Popen(argv, cwd=path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_two_nodes_in_one_folder_keep_their_own_run_folders(pytester: pytest.Pytester, repo: ModelRepo) -> None:
    repo.model("shared", SCRIPT)
    port = free_port_pair()
    procs = [start(pytester.path, rank, port) for rank in (0, 1)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
    for rank in (0, 1):
        log = (pytester.path / f"mad_logs/node{rank}/shared.log").read_text()
        assert f"node {rank} in {pytester.path / f'mad_work/node{rank}/shared'}" in log
    assert (pytester.path / "perf.csv").read_text().count("\nshared,") == 1  # node 0's row
    assert (pytester.path / "mad_logs/node1/perf.csv").exists()


def test_a_node_that_fails_before_the_meeting_tells_the_others(pytester: pytest.Pytester, repo: ModelRepo) -> None:
    repo.model("shared", SCRIPT)
    (pytester.path / "blocker").write_text("a file where node 1's work folder should be\n")
    port = free_port_pair()
    began = time.monotonic()
    node0 = start(pytester.path, 0, port)
    time.sleep(1.0)
    node1 = start(pytester.path, 1, port, "--mad-work-dir=blocker/work")
    out0 = node0.communicate(timeout=180)[0]
    seconds = time.monotonic() - began
    out1 = node1.communicate(timeout=60)[0]
    assert node0.returncode == node1.returncode == 1, out0 + out1
    assert "node 1 failed before the meeting: cannot prepare the run folder" in out0, out0
    assert seconds < 45, f"node 0 waited {seconds:.0f} s (the rendezvous timeout is 90 s)"
    assert "cannot prepare the run folder" in out1
