"""SLURM tasks in the model's image (no cluster): where the image comes from, the generated
batch and task scripts, and the task script run in bash with a stub ``docker`` that records
what it was asked and which variables a container would get."""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_madengine.context import Context
from pytest_madengine.errors import ExecutorError
from pytest_madengine.executors.docker.manifest import ImageEntry, Manifest, NodePull
from pytest_madengine.executors.slurm import container
from pytest_madengine.executors.slurm import poller as P
from pytest_madengine.executors.slurm.executor import SlurmExecutor, SlurmPlan
from pytest_madengine.session import Options

from .test_slurm_deploy import Partitions, spec

DIGEST = "sha256:" + "1" * 64
PUSHED = "127.0.0.1:5000/ns/ci-zoo_bert_df:" + "ab" * 32
STUB_DOCKER = r"""#!/bin/bash
# Records each call; `run` writes the variables a container would get (-e NAME: the caller's value).
{ printf '%q ' docker "$@"; echo; } >> "$DOCKER_LOG"
case "$1" in
  pull) if [ -n "${FAIL_PULL:-}" ]; then echo "Error response from daemon: registry down" >&2; exit 1; fi ;;
  run) shift
       while [ $# -gt 0 ]; do
         if [ "$1" = -e ]; then n=$2; [ -n "${!n+x}" ] && printf '%s=%s\0' "$n" "${!n}" >> "$DOCKER_ENV"; shift; fi
         shift
       done ;;
esac
exit 0
"""


def executor(tmp_path: Path, ctx: dict[str, Any], *, use_image: str = "", manifest: Manifest | None = None) -> SlurmExecutor:
    ex = SlurmExecutor(Options(root=tmp_path, log_dir=tmp_path / "logs", work_dir=tmp_path / "work",
                               use_image=use_image), Context(ctx), "0123456789ab", poller=P.SlurmPoller(Partitions()))
    ex.manifest = manifest
    return ex


def pushed_manifest(tmp_path: Path, *, pushed: bool = True) -> Manifest:
    entry = ImageEntry(key="ci-zoo_bert_df", model="zoo/bert", docker_image="ci-zoo_bert_df",
                       docker_sha=DIGEST if pushed else "", registry_image=PUSHED if pushed else "",
                       build_hash="ab" * 32)
    return Manifest(tmp_path / "build_manifest.json", (entry,), {})


def plan_in_image(tmp_path: Path, slurm: dict[str, Any] | None = None, *, dist: dict[str, Any] | None = None,
                  use_image: str = "", manifest: Manifest | None = None, card: dict[str, Any] | None = None,
                  extra_ctx: dict[str, Any] | None = None, **kw: Any) -> SlurmPlan:
    ctx: dict[str, Any] = {"slurm": {"partition": "debug", **(slurm or {})}, **(extra_ctx or {})}
    if dist is not None:
        ctx["distributed"] = dist
    ex = executor(tmp_path, ctx, use_image=use_image, manifest=manifest)
    plan = ex.plan(spec(tmp_path, raw=card, ctx=ctx, **kw))
    assert isinstance(plan, SlurmPlan)
    return plan


def run_task(tmp_path: Path, plan: SlurmPlan, rank: int, nodes: int, *, fail_pull: bool = False
             ) -> tuple[subprocess.CompletedProcess[str], list[list[str]], dict[str, str]]:
    """task.sh as node ``rank`` of job 77 runs it, with stub scontrol/getent/docker: (the run,
    docker's calls, the variables the container got)."""
    assert plan.deploy is not None
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "docker").write_text(STUB_DOCKER)
    names = " ".join(f"n{i + 1}" for i in range(nodes))
    (bindir / "scontrol").write_text(f"#!/bin/bash\n[ \"$1 $2\" = 'show hostnames' ] && printf '%s\\n' {names}\n")
    (bindir / "getent").write_text('#!/bin/bash\necho "10.0.0.${2#n} $2"\n')
    for tool in ("docker", "scontrol", "getent"):
        (bindir / tool).chmod(0o755)
    (plan.deploy.node_dir / f"node{rank}").mkdir(parents=True, exist_ok=True)
    log, envfile = tmp_path / "docker.log", tmp_path / "docker.env"
    for f in (log, envfile):
        f.write_text("")
    env = {"SLURM_NODEID": str(rank), "SLURM_NNODES": str(nodes), "SLURM_JOB_NODELIST": "n[1-4]",
           "SLURM_JOB_ID": "77", "SLURMD_NODENAME": f"n{rank + 1}", "PATH": f"{bindir}:/usr/bin:/bin",
           "DOCKER_LOG": str(log), "DOCKER_ENV": str(envfile), **({"FAIL_PULL": "1"} if fail_pull else {})}
    done = subprocess.run(["bash", "-c", plan.task_script], capture_output=True, text=True, env=env, timeout=30)
    calls = [shlex.split(line) for line in log.read_text().splitlines()]
    got = dict(item.split("=", 1) for item in envfile.read_text().split("\0") if "=" in item)
    return done, calls, got


# ------------------------------------------------------------------- where the image comes from


def test_image_sources(tmp_path: Path) -> None:
    ex = executor(tmp_path, {"slurm": {}}, manifest=pushed_manifest(tmp_path))
    image = ex.node_image(spec(tmp_path))
    assert image is not None and image.image == PUSHED and image.pull == NodePull(PUSHED, DIGEST)
    with pytest.raises(ExecutorError, match="never pushed to a registry"):
        executor(tmp_path, {"slurm": {}}, manifest=pushed_manifest(tmp_path, pushed=False)).node_image(spec(tmp_path))
    image = executor(tmp_path, {"slurm": {}}, use_image="rocm/x:1").node_image(spec(tmp_path))
    assert image is not None and (image.image, image.pull, image.by_name) == ("rocm/x:1", None, True)
    auto = executor(tmp_path, {"slurm": {}}, use_image="auto")
    image = auto.node_image(spec(tmp_path, raw={"env_vars": {"DOCKER_IMAGE_NAME": "reg:5000/y:2"}}))
    assert image is not None and image.image == "reg:5000/y:2"
    with pytest.raises(ExecutorError, match="has no env_vars.DOCKER_IMAGE_NAME"):
        auto.node_image(spec(tmp_path))
    image = executor(tmp_path, {"slurm": {}, "MAD_CONTAINER_IMAGE": "mad-base:bookworm"}).node_image(spec(tmp_path))
    assert image is not None and not image.by_name and image.pull_lines() == []  # a local name: not pulled
    assert executor(tmp_path, {"slurm": {}}).node_image(spec(tmp_path)) is None  # the nodes' hosts


def test_no_image_keeps_the_host_run(tmp_path: Path) -> None:
    plan = plan_in_image(tmp_path, {"nodes": 2})
    assert "docker" not in plan.task_script and "docker" not in plan.batch_script
    assert any("tasks run on the nodes' hosts" in n for n in plan.notes)


# ------------------------------------------------------------------- the scripts


def test_two_nodes_from_a_manifest_the_scripts(tmp_path: Path) -> None:
    plan = plan_in_image(tmp_path, {"nodes": 2, "env_vars": {"VLLM_ANY": "1"}}, dist={"launcher": "torchrun"},
                         manifest=pushed_manifest(tmp_path), argv=("python3", "train.py"))
    job = plan.deploy
    assert job is not None and job.image is not None
    task, batch = plan.task_script, plan.batch_script
    assert f"docker pull 127.0.0.1:5000/ns/ci-zoo_bert_df@{DIGEST} || " in task  # by digest
    run = next(ln for ln in task.splitlines() if ln.startswith("docker run"))
    assert run.startswith(f"docker run --rm --init --network host --ipc host -v {tmp_path}:{tmp_path}")
    assert '--name "$NAME"' in run and f"{shlex.quote(PUSHED)} python3 train.py &" in run  # python3 of the image
    assert 'NAME=mad-slurm-"$SLURM_JOB_ID"-node"$SLURM_NODEID"' in task
    assert "trap 'docker rm -f \"$NAME\" >/dev/null 2>&1' EXIT" in task and "trap 'exit 143' TERM INT" in task
    for name in ("VLLM_ANY", "MAD_MULTI_NODE_RUNNER", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "NNODES", "K",
                 "MAD_HOST_0", "MAD_HOST_1", "NCCL_SOCKET_IFNAME"):
        assert f"-e {name} " in run, name
    assert "export PATH=" not in task  # this host's Python is not the image's
    lines = batch.splitlines()
    at = lines.index("rc=$?")
    assert lines[at - 1].startswith("srun --ntasks-per-node=1 --kill-on-bad-exit=1 ")
    assert lines[at + 2] == ("srun --ntasks-per-node=1 --output=/dev/null bash -c 'docker rm -f "
                             "mad-slurm-\"$SLURM_JOB_ID\"-node\"$SLURM_NODEID\" >/dev/null 2>&1; true'")
    assert lines[at + 3] == "exit $rc"
    assert any("pulled by digest 127.0.0.1:5000/ns/ci-zoo_bert_df@" in n for n in plan.notes)
    shown = "\n".join(plan.lines())  # the dry run prints what is submitted
    assert "--- batch script ---" in shown and "--- task script (run on every node) ---" in shown
    assert "docker run --rm --init" in shown and "docker pull 127.0.0.1:5000/ns/ci-zoo_bert_df@" in shown
    for text in (task, batch):
        subprocess.run(["bash", "-n"], input=text, text=True, check=True)


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed", "megatron", "torchtitan", "primus", "vllm", "sglang",
                                      "sglang-disagg"])
def test_every_launcher_variable_reaches_the_container(tmp_path: Path, launcher: str) -> None:
    """What launch() returns for a node rank, and the user's variables, are what that node's
    container gets: no allow-list (madengine passes one into its SLURM containers)."""
    from pytest_madengine.multinode.launchers import registry

    nodes, hosts = 3, ("10.0.0.1", "10.0.0.2", "10.0.0.3")
    dist = {"launcher": launcher, "nnodes": nodes}
    plan = plan_in_image(tmp_path, {"nodes": nodes, "gpus_per_node": 2, "env_vars": {"SGLANG_X": "s"}}, dist=dist,
                         use_image="reg:5000/img:1", card={"env_vars": {"TORCHTITAN_Y": "t"}},
                         env={"TORCHTITAN_Y": "t"})
    for rank in range(nodes):
        done, calls, got = run_task(tmp_path, plan, rank, nodes)
        assert done.returncode == 0, done.stderr
        want = registry.launch(dist, registry.topology(dist, gpus=2, node_rank=rank, master_addr=hosts[0],
                                                       hosts=hosts), "zoo/bert")
        assert {k: got.get(k) for k in want.env} == dict(want.env), (launcher, rank)
        assert got["SGLANG_X"] == "s" and got["TORCHTITAN_Y"] == "t" and got["K"] == "v w"
        assert (got["NODE_RANK"], got["MAD_DEPLOYMENT_TYPE"], got["MAD_SLURM_JOB_ID"]) == (str(rank), "slurm", "77")
        assert [c[:2] for c in calls] == [["docker", "pull"], ["docker", "run"], ["docker", "rm"]]
        assert calls[0][2] == "reg:5000/img:1" and f"mad-slurm-77-node{rank}" in calls[1]
        assert calls[2] == ["docker", "rm", "-f", f"mad-slurm-77-node{rank}"]  # removed when the task ends
        if want.setup:  # the launcher's setup (ray start) runs in the container, before the script
            run = calls[1]
            script = run[run.index("reg:5000/img:1") + 3]
            assert script.startswith("ray ") and script.endswith('exec "$@"'), script


def test_single_node_honours_the_launcher_in_the_image(tmp_path: Path) -> None:
    plan = plan_in_image(tmp_path, {"nodes": 1, "gpus_per_node": 2}, dist={"launcher": "torchrun"},
                         use_image="reg:5000/img:1")
    done, _, got = run_task(tmp_path, plan, 0, 1)
    assert done.returncode == 0, done.stderr
    assert got["MAD_MULTI_NODE_RUNNER"] == "torchrun --standalone --nproc_per_node=2"
    assert got["MAD_LAUNCHER"] == "torchrun" and got["MAD_RUNTIME_NGPUS"] == "2"


def test_a_failed_pull_fails_the_node_with_its_reason(tmp_path: Path) -> None:
    plan = plan_in_image(tmp_path, {"nodes": 2}, manifest=pushed_manifest(tmp_path))
    done, calls, _ = run_task(tmp_path, plan, 1, 2, fail_pull=True)
    assert done.returncode == 1 and [c[1] for c in calls] == ["pull"]  # no container started
    reason = container.pull_failure([[], done.stderr.splitlines()])
    assert reason == f"node 1 (n2): cannot pull 127.0.0.1:5000/ns/ci-zoo_bert_df@{DIGEST} (the image the " \
                     "manifest names, by its digest)", done.stderr
    assert container.pull_failure([["performance: 1 x"]]) == ""


def test_served_data_and_shared_data_are_mounted_at_their_paths(tmp_path: Path) -> None:
    base = spec(tmp_path)
    data = dataclasses.replace(base, data_mounts=(("/srv/words", "/data", True), ("/srv/rw", "/data2", False)))
    ctx = {"slurm": {"partition": "debug", "shared_data": "/shared/data"}}
    plan = executor(tmp_path, ctx, use_image="mad-base:bookworm").plan(data)
    assert isinstance(plan, SlurmPlan)
    run = next(ln for ln in plan.task_script.splitlines() if ln.startswith("docker run"))
    assert "-v /srv/words:/srv/words:ro -v /srv/rw:/srv/rw -v /shared/data:/shared/data" in run
    assert "docker pull" not in plan.task_script  # a local name


def test_gpus_reach_the_container(tmp_path: Path) -> None:
    plan = plan_in_image(tmp_path, {"gpus_per_node": 8}, use_image="reg:5000/img:1")
    assert "--device /dev/kfd --device /dev/dri --group-add video" in plan.task_script
    assert "--device" not in plan_in_image(tmp_path, {"gpus_per_node": 0}, use_image="reg:5000/img:1").task_script


def test_slurm_multi_pulls_the_manifest_image_by_digest(tmp_path: Path) -> None:
    plan = plan_in_image(tmp_path, {"nodes": 2}, dist={"launcher": "slurm_multi"}, manifest=pushed_manifest(tmp_path),
                         argv=("bash", "run.slurm"))
    text = plan.batch_script
    pull = next(ln for ln in text.splitlines() if ln.startswith("srun "))
    assert f"docker pull 127.0.0.1:5000/ns/ci-zoo_bert_df@{DIGEST}" in shlex.split(pull)[6]
    assert f"export DOCKER_IMAGE_NAME={shlex.quote(PUSHED)}" in text and plan.task_script == ""


def test_slurm_args_and_the_slurm_key_share_one_container_run(tmp_path: Path) -> None:
    ex = executor(tmp_path, {"slurm_args": {"PARTITION": "debug", "TIME": "10", "NODES": 2}},
                  manifest=pushed_manifest(tmp_path))
    plan = ex.plan(spec(tmp_path))
    assert isinstance(plan, SlurmPlan)
    assert f"docker pull 127.0.0.1:5000/ns/ci-zoo_bert_df@{DIGEST} || " in plan.task_script
    assert 'NAME=mad-slurm-"$SLURM_JOB_ID"-node"$SLURM_NODEID"' in plan.task_script
    assert "exit $rc" in plan.batch_script  # the same cleanup step


def test_container_names_are_ours() -> None:
    assert container.container_name("77", 1) == "mad-slurm-77-node1"
    assert container.is_registry_image("host:5000/x") and not container.is_registry_image("mad-base:bookworm")
