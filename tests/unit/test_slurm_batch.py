"""The generated batch and task scripts, as text (and task.sh run with stub SLURM commands)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pytest_madengine.executors.docker.manifest import NodePull
from pytest_madengine.executors.slurm.batch import BatchPlan, batch_script, job_name, task_script


def plan(tmp: Path = Path("/shared/logs/m.slurm"), **kw: object) -> BatchPlan:
    base = dict(job_name="mad-0123456789ab-m", job_dir=tmp, node_dir=Path("/shared/work/m.slurm"),
                argv=("bash", "run.sh", "--batch", "8"), env={"MAD_MODEL_NAME": "m"}, nodes=2,
                partition="debug", time="00:30:00", workspace=Path("/shared/ws"))
    base.update(kw)
    return BatchPlan(**base)  # type: ignore[arg-type]


def sbatch_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


def test_header_holds_every_resource() -> None:
    text = batch_script(plan(gpus_per_node=8, account="proj", qos="high", nodelist="n[1-2]", exclude="n9",
                             extra_sbatch=("--exclusive", "--mem=8G")))
    assert sbatch_lines(text) == [
        "#SBATCH --job-name=mad-0123456789ab-m", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8", "#SBATCH --partition=debug", "#SBATCH --time=00:30:00",
        "#SBATCH --output=/shared/logs/m.slurm/%j.batch.out", "#SBATCH --account=proj", "#SBATCH --qos=high",
        "#SBATCH --nodelist=n[1-2]", "#SBATCH --exclude=n9", "#SBATCH --exclusive", "#SBATCH --mem=8G",
    ]
    assert text.startswith("#!/bin/bash\n")
    assert "srun --ntasks-per-node=1 --kill-on-bad-exit=1 --output=/shared/logs/m.slurm/%j.node%t.out " \
           "bash /shared/logs/m.slurm/task.sh" in text


def test_no_gpus_no_gpu_option_and_optional_lines_absent() -> None:
    text = batch_script(plan(gpus_per_node=0))
    assert "--gpus-per-node" not in text and "--account" not in text and "--qos" not in text
    assert "--nodelist" not in text and "--exclude" not in text


def test_paths_with_spaces_are_quoted(tmp_path: Path) -> None:
    text = batch_script(plan(tmp=Path("/shared/my logs/m.slurm")))
    assert '#SBATCH --output="/shared/my logs/m.slurm/%j.batch.out"' in text
    assert "'/shared/my logs/m.slurm/task.sh'" in text
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_end_marker_trap_keeps_the_exit_status(tmp_path: Path) -> None:
    text = batch_script(plan(tmp=tmp_path))
    body = "\n".join(line for line in text.splitlines() if not line.startswith("srun"))
    env = {**os.environ, "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_PARTITION": "debug"}
    done = subprocess.run(["bash", "-c", body + "\nexit 3\n"], env=env, check=False)
    assert done.returncode == 3
    assert (tmp_path / "77.done").read_text().split() == ["3", "n[1-2]", "debug"]
    assert not (tmp_path / "77.done.tmp").exists()


def test_end_marker_trap_survives_a_hostile_job_dir(tmp_path: Path) -> None:
    """Spaces, a single quote and $(...) in the job folder: the trap still writes the marker,
    and nothing in the path is executed."""
    job_dir = tmp_path / "my logs" / "it's $(touch X)" / "m.slurm"
    job_dir.mkdir(parents=True)
    work = tmp_path / "cwd"
    work.mkdir()
    text = batch_script(plan(tmp=job_dir))
    trap = next(line for line in text.splitlines() if line.startswith("trap "))
    env = {**os.environ, "SLURM_JOB_ID": "78", "SLURM_JOB_NODELIST": "n1", "SLURM_JOB_PARTITION": "debug"}
    done = subprocess.run(["bash", "-c", trap + "\nexit 5\n"], cwd=work, env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 5, done.stderr
    assert (job_dir / "78.done").read_text().split() == ["5", "n1", "debug"]
    assert not (job_dir / "78.done.tmp").exists()
    assert not (work / "X").exists() and not list(tmp_path.rglob("X"))


def test_job_name_is_unique_per_run_and_safe() -> None:
    assert job_name("0123456789ab", "zoo/bert large") == "mad-0123456789ab-zoo_bert_large"


def test_task_script_exports_quoted_env_and_runner() -> None:
    text = task_script(plan(env={"A": "x y", "B": "$(touch /tmp/pwned)", "C": "it's", "CUDA_VISIBLE_DEVICES": "0",
                                 "MAD_MULTI_NODE_RUNNER": "torchrun --standalone"}, gpus_per_node=4))
    assert "export A='x y'" in text and "export B='$(touch /tmp/pwned)'" in text
    assert "export C='it'\"'\"'s'" in text
    assert "CUDA_VISIBLE_DEVICES" not in text and "--standalone" not in text  # set per node, never copied
    assert ('export MAD_MULTI_NODE_RUNNER="torchrun --nnodes=$NNODES --nproc_per_node=4 --node_rank=$NODE_RANK '
            '--master_addr=$MASTER_ADDR --master_port=$MASTER_PORT"') in text
    assert "export MAD_RUNTIME_NGPUS=4" in text
    assert "cd /shared/work/m.slurm/node\"$NODE_RANK\"" in text and text.rstrip().endswith("exec bash run.sh --batch 8")


def test_task_script_refuses_unexportable_names() -> None:
    with pytest.raises(ValueError, match="cannot be exported"):
        task_script(plan(env={"BAD-NAME": "1"}))


def test_task_script_in_a_container_passes_values_by_name() -> None:
    text = task_script(plan(docker_image="rocm/pytorch:latest", gpus_per_node=8, gpu_vendor="AMD",
                            env={"SECRET": "hunter2"}))
    line = next(x for x in text.splitlines() if x.startswith("docker run"))
    assert "hunter2" not in line and "-e SECRET" in line and "-e MASTER_ADDR" in line and "-e NODE_RANK" in line
    assert "--device /dev/kfd --device /dev/dri --group-add video" in line and "--network host" in line
    assert "-v /shared/ws:/shared/ws" in line and "rocm/pytorch:latest bash run.sh --batch 8 &" in line
    assert "trap 'docker rm -f \"$NAME\" >/dev/null 2>&1' EXIT" in text
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_task_script_on_a_node_with_stub_slurm_commands(tmp_path: Path) -> None:
    """task.sh as node 1 of job 4242 would run it: the rendezvous points at the first node."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "scontrol").write_text(
        "#!/bin/bash\n"
        'if [ "$1 $2" = "show hostnames" ]; then printf "n7\\nn8\\n"; exit; fi\n'
        'if [ "$1 $2 $3" = "show node n7" ]; then echo "NodeName=n7 Arch=x86_64 NodeAddr=10.1.2.7 NodeHostName=h7"; fi\n')
    (bindir / "scontrol").chmod(0o755)
    node_dir = tmp_path / "work"
    (node_dir / "node1").mkdir(parents=True)
    (node_dir / "node1" / "run.sh").write_text('echo "$NODE_RANK/$NNODES $MASTER_ADDR:$MASTER_PORT [$Q] $PWD"\n'
                                              'echo "$MAD_MULTI_NODE_RUNNER"\n')
    text = task_script(plan(node_dir=node_dir, argv=("bash", "run.sh"), env={"Q": "a 'b' $c"}))
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "SLURM_NODEID": "1", "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "n[7-8]", "SLURM_JOB_ID": "4242"}
    out = subprocess.run(["bash", "-c", text], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [
        f"1/2 10.1.2.7:24242 [a 'b' $c] {node_dir / 'node1'}",
        "torchrun --nnodes=2 --nproc_per_node=1 --node_rank=1 --master_addr=10.1.2.7 --master_port=24242",
    ]


@pytest.mark.parametrize(("model_env", "ctx_env", "field"), [
    ({"BAD-NAME": "1"}, {}, "models.json field 'env_vars'"),
    ({}, {"2X": "1"}, "context 'docker_env_vars'"),
])
def test_executor_reports_unexportable_names_as_the_models_problem(
        tmp_path: Path, model_env: dict[str, str], ctx_env: dict[str, str], field: str) -> None:
    """task_script's ValueError is no crash: the item fails with a reason naming model and field."""
    from pytest_madengine.context import Context
    from pytest_madengine.executors.base import RunSpec
    from pytest_madengine.executors.slurm import poller as P
    from pytest_madengine.executors.slurm.executor import SlurmExecutor
    from pytest_madengine.models import Model
    from pytest_madengine.session import Options

    class Cluster(P.Controller):
        def partitions(self) -> list[str]:
            return ["debug*"]

        def run(self, argv: list[str], *, timeout: float = 0, env: object = None) -> str:
            raise AssertionError(f"nothing may be submitted: {argv}")

    ctx = Context({"slurm_args": {"PARTITION": "debug", "TIME": "10"}})
    ex = SlurmExecutor(Options(root=tmp_path, log_dir=tmp_path / "logs", work_dir=tmp_path / "work"), ctx,
                       "0123456789ab", poller=P.SlurmPoller(Cluster()))
    model = Model(name="zoo/bert", source=tmp_path / "models.json", index=0, base_dir=tmp_path, scope=None,
                  dockerfile="docker/x", scripts="run.sh", n_gpus=0, tags=(), env_vars=model_env)
    run_dir = tmp_path / "work" / "zoo" / "bert"
    run_dir.mkdir(parents=True)
    spec = RunSpec(model=model, argv=("bash", "run.sh"), env={"MAD_MODEL_NAME": "zoo/bert", **model_env, **ctx_env},
                   run_dir=run_dir, workspace=tmp_path, timeout=60.0, gpus=(), gpu_vendor="AMD",
                   use_gpu_devices=False, context=Context({}), run_id="0123456789ab")
    from pytest_madengine.errors import ExecutorError

    bad = next(iter({**model_env, **ctx_env}))
    with pytest.raises(ExecutorError) as info:  # planning fails; the session makes it the model's reason
        ex.plan(spec)
    assert str(info.value).startswith(f"model 'zoo/bert': {field}: environment variable name {bad!r} cannot be exported")
    assert not (tmp_path / "logs" / "zoo" / "bert.slurm" / "task.sh").exists()


def test_each_node_pulls_the_manifest_image_before_its_container() -> None:
    pull = NodePull("r:5000/ci-m:h", "sha256:ab")
    text = task_script(plan(docker_image="r:5000/ci-m:h", node_pull=pull))
    lines = text.splitlines()
    at_pull = next(i for i, ln in enumerate(lines) if ln.startswith("docker pull r:5000/ci-m@sha256:ab || "))
    at_run = next(i for i, ln in enumerate(lines) if ln.startswith("docker run"))
    assert 'echo "pytest-madengine: node $SLURM_NODEID pulls "r:5000/ci-m:h' in lines
    assert lines[at_pull + 1] == "docker tag r:5000/ci-m@sha256:ab r:5000/ci-m:h || exit 1"
    assert at_pull < at_run and "r:5000/ci-m:h" in lines[at_run]
    assert "docker pull" not in task_script(plan(docker_image="mad-base:bookworm"))  # a local name
    assert "docker pull rocm/x:1 ||" in task_script(plan(docker_image="rocm/x:1"))  # a registry name, by name
