"""Plans as data: the local and multi-node renderings (docker's and slurm's have their own
unit tests), computed without running anything."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pytest_madengine.context import Context
from pytest_madengine.executors.base import RunSpec
from pytest_madengine.executors.local import LocalExecutor, LocalPlan
from pytest_madengine.models import Model


def spec(tmp_path: Path, env: dict[str, str] | None = None, argv: tuple[str, ...] = ("python3", "bench.py")) -> RunSpec:
    model = Model(name="zoo/m", source=tmp_path / "models.json", index=0, base_dir=tmp_path, scope=None,
                  dockerfile="docker/m", scripts="scripts/m/bench.py", n_gpus=0, tags=())
    return RunSpec(model=model, argv=argv, env=env or {"MAD_MODEL_NAME": "zoo/m", "HF_TOKEN": "canary"},
                   run_dir=tmp_path / "run", workspace=tmp_path, timeout=60.0, gpus=(), gpu_vendor="NONE",
                   use_gpu_devices=False, context=Context({}), run_id="r")


def test_local_plan_is_data_and_renders_without_secrets(tmp_path: Path) -> None:
    plan = LocalExecutor().plan(spec(tmp_path))
    assert isinstance(plan, LocalPlan) and plan.argv == (sys.executable, "bench.py")
    assert plan.cwd == str(tmp_path / "run") and plan.env_added["MAD_MODEL_NAME"] == "zoo/m"
    text = plan.render()
    assert text.splitlines()[0] == "plan for zoo/m (local): timeout 60 s, GPUs none"
    assert "HF_TOKEN=***" in text and "canary" not in text
    assert not (tmp_path / "run").exists()  # planning writes nothing


def test_multi_node_plans_say_where_the_node_stands(tmp_path: Path) -> None:
    env = {"MAD_MULTI_NODE_RUNNER": "torchrun --nnodes 2 --node_rank 1", "NODE_RANK": "1", "NNODES": "2",
           "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "MAD_GPU_IDS": "2,3"}
    plan = LocalExecutor().plan(spec(tmp_path, env))
    assert "  multi-node: node 1 of 2, rendezvous 10.0.0.1:29500, runner torchrun --nnodes 2 --node_rank 1" \
        in plan.render().splitlines()
    assert "MAD_GPU_IDS" in plan.render() and "MAD_GPU_IDS" not in plan.comparable()  # GPU ids aside


def test_values_marked_secret_are_masked_under_any_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_madengine.executors.base import render_env, shown_value

    monkeypatch.setenv("MAD_SECRETS_DB", "pa55word-xyz")
    monkeypatch.setenv("MAD_SECRETS_SHORT", "ab")  # too short to mask safely
    assert shown_value("DB_URL", "postgres://u:pa55word-xyz@db/x") == "postgres://u:***@db/x"
    assert shown_value("HF_TOKEN", "anything") == "***" and shown_value("MODE", "ab") == "ab"
    assert render_env({"A": "pa55word-xyz"}) == ["  A=***"]
