"""The SLURM executor's plans (data, no cluster): what each path would run."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_madengine.context import Context
from pytest_madengine.errors import UsageError
from pytest_madengine.executors.base import RunSpec
from pytest_madengine.executors.slurm import poller as P
from pytest_madengine.executors.slurm.executor import SlurmExecutor, spec_key
from pytest_madengine.models import Model
from pytest_madengine.session import Options


class Partitions(P.Controller):
    def partitions(self) -> list[str]:
        self.calls["sinfo"] += 1
        return ["debug*", "batch"]


def executor(tmp_path: Path, **slurm_args: object) -> SlurmExecutor:
    ctx = Context({"slurm_args": {"PARTITION": "debug", "TIME": "10", **slurm_args}})
    return SlurmExecutor(Options(root=tmp_path, log_dir=tmp_path / "logs", work_dir=tmp_path / "work"), ctx,
                         "0123456789ab", poller=P.SlurmPoller(Partitions()))


def spec(tmp_path: Path, *, n_gpus: int = 0, args: tuple[str, ...] = ()) -> RunSpec:
    model = Model(name="zoo/bert", source=tmp_path / "models.json", index=0, base_dir=tmp_path, scope=None,
                  dockerfile="docker/x", scripts="scripts/bert/run.sh", n_gpus=n_gpus, tags=("t",))
    return RunSpec(model=model, argv=("bash", "run.sh", *args), env={"MAD_MODEL_NAME": "zoo/bert", "K": "v w"},
                   run_dir=tmp_path / "work" / "zoo" / "bert", workspace=tmp_path, timeout=60.0, gpus=(),
                   gpu_vendor="AMD", use_gpu_devices=False, context=Context({}), run_id="0123456789ab")


def test_native_plan(tmp_path: Path) -> None:
    ex = executor(tmp_path, NODES=2, GPUS_PER_NODE=4, ACCOUNT="proj")
    plan = ex.plan(spec(tmp_path))
    assert plan.path == "native" and plan.argv[:2] == ("sbatch", "--parsable")
    assert plan.argv[2] == str(tmp_path / "logs" / "zoo" / "bert.slurm" / "job.sbatch")
    text = plan.batch_script
    for line in ("#SBATCH --job-name=mad-0123456789ab-zoo_bert", "#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --partition=debug", "#SBATCH --time=10", "#SBATCH --account=proj"):
        assert line + "\n" in text
    assert "export K='v w'" in plan.task_script and "--nproc_per_node=4" in plan.task_script
    assert f"cd {tmp_path / 'work' / 'zoo' / 'bert.slurm'}/node\"$NODE_RANK\"" in plan.task_script
    rendered = plan.render()  # what a dry run prints and the log starts with
    assert "native: sbatch --parsable" in rendered and "#SBATCH --nodes=2" in rendered
    assert ex.describe() == "slurm (partition debug, 2 node(s), time 10)"


def test_gpus_default_to_the_models(tmp_path: Path) -> None:
    assert "--gpus-per-node=8" in executor(tmp_path).plan(spec(tmp_path, n_gpus=8)).batch_script
    assert "--gpus-per-node" not in executor(tmp_path, GPUS_PER_NODE=0).plan(spec(tmp_path, n_gpus=8)).batch_script


def test_framework_plan_and_environment(tmp_path: Path) -> None:
    ex = executor(tmp_path, FRAMEWORK="sglang_disagg", PREFILL_NODES=1, DECODE_NODES=3, DOCKER_IMAGE="img:1", QOS="hi")
    plan = ex.plan(spec(tmp_path, args=("--model", "Qwen3-32B")))
    assert plan.path == "framework"
    assert plan.argv == ("bash", str(tmp_path / "scripts" / "sglang_disagg" / "run.sh"))
    env = plan.env_added
    assert (env["MODEL_NAME"], env["PREFILL_NODES"], env["DECODE_NODES"], env["NODES"]) == ("Qwen3-32B", "1", "3", "4")
    assert (env["PARTITION"], env["TIME"], env["DOCKER_IMAGE"], env["QOS"]) == ("debug", "10", "img:1", "hi")
    assert env["SBATCH_JOB_NAME"] == "mad-0123456789ab-zoo_bert" and env["SBATCH_QOS"] == "hi"
    assert env["MAD_SLURM_LOG_DIR"] == plan.cwd and env["K"] == "v w"


def test_unknown_partition_is_a_usage_error_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="slurm_args PARTITION: 'gpu' is not a partition"):
        executor(tmp_path, PARTITION="gpu")


def test_sinfo_failure_is_a_usage_error(tmp_path: Path) -> None:
    class Down(P.Controller):
        def partitions(self) -> list[str]:
            raise P.ControllerError("sinfo: Unable to contact slurm controller")

    ctx = Context({"slurm_args": {"PARTITION": "debug", "TIME": "10"}})
    with pytest.raises(UsageError, match="cannot list this cluster's partitions with sinfo: .*Unable to contact"):
        SlurmExecutor(Options(root=tmp_path), ctx, "r", poller=P.SlurmPoller(Down()))


def test_a_job_submitted_ahead_is_only_used_for_the_same_plan(tmp_path: Path) -> None:
    a, b = spec(tmp_path), spec(tmp_path, args=("--x",))
    assert spec_key(a) == spec_key(spec(tmp_path)) and spec_key(a) != spec_key(b)
