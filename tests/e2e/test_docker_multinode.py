"""(b) Multi-node with the docker executor: two pytest processes (two nodes on this host) run
the demo's torchrun + gloo model in two containers that rendezvous over host networking
(127.0.0.1, a free port), plus the data mirror mounted into a container.

The image comes FROM the CI base image with the PyTorch CPU wheel of this machine
(``/opt/wheels``, hard-linked into the build context); its other dependencies come from PyPI.
Everything made here is removed afterwards. Without Docker, the base image or the wheel the
tests skip, except under CI=true where they fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from pytest_madengine.executors.docker import plan as dplan

from .multinode_helpers import Nodes, copy_demo, free_port_pair, node_context, show

pytestmark = pytest.mark.docker

BASE = os.environ.get("MAD_TEST_BASE_IMAGE", "mad-base:bookworm")
def _cleanup(client: Any, token: str) -> None:
    for c in client.containers.list(all=True, filters={"label": dplan.LABEL_MODEL}, ignore_removed=True):
        if token in c.labels.get(dplan.LABEL_MODEL, ""):
            c.remove(force=True)
    for image in client.images.list(filters={"label": dplan.LABEL_HASH}):
        if any(token in t for t in image.tags):
            try:
                client.images.remove(image.id, force=True)
            except Exception:  # noqa: BLE001
                pass


def test_two_containers_rendezvous(pytester: pytest.Pytester, client: Any, torch_image: str, tmp_path: Path) -> None:
    token = uuid.uuid4().hex[:8]
    path = pytester.path
    copy_demo(path)
    (path / "docker").mkdir()
    (path / "docker" / "torch.ubuntu.any.Dockerfile").write_text(
        f"# CONTEXT {{'guest_os': 'UBUNTU'}}\nARG BASE_DOCKER\nFROM ${{BASE_DOCKER}}\nENV MAD_E2E_TOKEN={token}\n")
    (path / "scripts" / "mirror").mkdir(parents=True)
    (path / "scripts" / "mirror" / "run.sh").write_text(
        'echo "datahome=$MAD_DATAHOME"\ntest -f /.dockerenv && echo in-container\n'
        'echo "performance: $(cat "$MAD_DATAHOME/input.txt") items_per_second"\n')
    dist, mirror = f"dist_{token}", f"mirror_{token}"
    entries = [
        {"name": dist, "dockerfile": "docker/torch", "scripts": "scripts/dummy_torchrun/run.sh", "n_gpus": "0",
         "tags": ["t"], "args": "--steps 5", "timeout": 300},
        {"name": mirror, "dockerfile": "docker/torch", "scripts": "scripts/mirror/run.sh", "n_gpus": "0",
         "tags": ["m"], "args": "", "timeout": 120},
    ]
    (path / "models.json").write_text(json.dumps(entries))
    data = tmp_path / "data"
    data.mkdir()
    (data / "input.txt").write_text("7\n")
    build_arg = {"BASE_DOCKER": torch_image}
    try:
        # One node first: builds the image both nodes then reuse, runs torchrun --standalone in a
        # container, and mounts the mirror folder at its own path.
        single = Nodes(path, executor="docker", tags="t,m")
        single.start(0, {"docker_build_arg": build_arg}, f"--mad-force-mirror-local={data}", name="single")
        [s] = single.wait(timeout=900)
        assert s.rc == 0, show([s])
        assert "runner: torchrun --standalone --nproc_per_node=1" in s.log(dist)
        assert "all_reduce sum 1 (expected 1)" in s.log(dist)
        assert f"datahome={data}" in s.log(mirror) and "in-container" in s.log(mirror)
        assert {r["model"]: r["performance"] for r in s.perf()}[mirror] == "7"

        port = free_port_pair()
        nodes = Nodes(path, executor="docker", tags="t")
        # A secret variable (kept out of the containers' config) still reaches every node's run.
        secret = f"mn-secret-{token}"
        (path / "around").mkdir()
        (path / "around" / "tok.sh").write_text('echo "pre sees $(printf %s "$HF_TOKEN" | sha256sum | cut -c1-16)"\n')
        for rank in (0, 1):
            ctx = node_context(rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, rendezvous_timeout=120,
                               docker_build_arg=build_arg)
            ctx.update(docker_env_vars={"HF_TOKEN": secret}, pre_scripts=[{"path": "around/tok.sh"}])
            nodes.start(rank, ctx, f"--mad-force-mirror-local={data}")
        n0, n1 = nodes.wait(timeout=600)
        assert (n0.rc, n1.rc) == (0, 0), show([n0, n1])
        for node in (n0, n1):
            log = node.log(dist)
            assert (f"runner: torchrun --nproc_per_node 1 --nnodes 2 --node_rank {node.rank} --master_addr 127.0.0.1 "
                    f"--master_port {port}") in log
            assert f"rank {node.rank}/2 on " in log and "all_reduce sum 3 (expected 3)" in log, log
            assert f"pre sees {hashlib.sha256(secret.encode()).hexdigest()[:16]}" in log and secret not in log
            [row] = node.perf()
            assert row["deployment_type"] == "docker" and row["nnodes"] == "2"
            assert row["docker_image"] == f"ci-{dist}_torch.ubuntu.any"
        [row0], [row1] = n0.perf(), n1.perf()
        assert row0["status"] == "SUCCESS" and float(row0["performance"]) > 0
        assert row1["status"] == "SUCCESS" and row1["performance"] == ""
        assert list(data.iterdir()) == [data / "input.txt"]  # the mirror marker is gone
        assert client.containers.list(all=True, filters={"label": f"{dplan.LABEL_MODEL}={dist}"}) == []
    finally:
        _cleanup(client, token)


def test_a_distributed_launcher_runs_the_same_in_a_container(pytester: pytest.Pytester, client: Any,
                                                              torch_image: str) -> None:
    """The launcher function that serves the local backend gives the container the same runner
    and variables (torchtitan: torchrun plus TORCHTITAN_*), none dropped on the way."""
    from .test_launchers import CHECK_PY, RUN_SH

    token = uuid.uuid4().hex[:8]
    path = pytester.path
    (path / "docker").mkdir()
    (path / "docker" / "torch.ubuntu.any.Dockerfile").write_text(
        f"# CONTEXT {{'guest_os': 'UBUNTU'}}\nARG BASE_DOCKER\nFROM ${{BASE_DOCKER}}\nENV MAD_E2E_TOKEN={token}\n")
    (path / "scripts" / "launch_check").mkdir(parents=True)
    (path / "scripts" / "launch_check" / "run.sh").write_text(RUN_SH)
    (path / "scripts" / "launch_check" / "check.py").write_text(CHECK_PY)
    name = f"titan_{token}"
    (path / "models.json").write_text(json.dumps([
        {"name": name, "dockerfile": "docker/torch", "scripts": "scripts/launch_check/run.sh", "n_gpus": "0",
         "tags": ["t"], "args": "", "timeout": 300,
         "distributed": {"launcher": "torchtitan", "nproc_per_node": 2}}]))
    try:
        res = pytester.runpytest("-p", "no:cacheprovider", "--mad-tags=t", "--mad-executor=docker",
                                 f"--mad-context={json.dumps({'docker_build_arg': {'BASE_DOCKER': torch_image}})}")
        log = (path / "mad_logs" / f"{name}.log").read_text()
        res.assert_outcomes(passed=1)
        for line in ("runner=torchrun --standalone --nproc_per_node=2", "env: TORCHTITAN_TENSOR_PARALLEL_SIZE=2",
                     "env: TORCHTITAN_FSDP_ENABLED=0", "sum 3.0 expected 3.0"):
            assert line in log, (line, log)
    finally:
        _cleanup(client, token)
