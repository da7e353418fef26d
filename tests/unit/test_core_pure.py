"""Pure pieces of the core: context, timeouts, argv, environment, GPU specs, reports."""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import pytest

from pytest_madengine import context as ctx_mod
from pytest_madengine.context import Context
from pytest_madengine.errors import ContextError, UsageError
from pytest_madengine.executors.base import RunOutcome
from pytest_madengine.gpus import devices as gpus
from pytest_madengine.models import Model
from pytest_madengine.results.metrics import PerfLine
from pytest_madengine.results.report import PERF_COLUMNS, append_perf_csv, junit_properties, perf_rows
from pytest_madengine.results.result import FAILURE, SUCCESS, ModelResult, Row
from pytest_madengine.session import resolve_timeout, script_argv, script_env, skip_reason
from pytest_madengine.verdict import evaluate


def model(**kw) -> Model:
    base = dict(name="m", source=Path("models.json"), index=0, base_dir=Path("."), scope=None,
                dockerfile="docker/d", scripts="scripts/m/run.sh", n_gpus=1, tags=("t",))
    base.update(kw)
    return Model(**base)


class TestContext:
    def test_json_and_python_literals(self):
        assert ctx_mod.parse_text('{"a": 1}') == {"a": 1}
        assert ctx_mod.parse_text("{'a': True, 'b': None}") == {"a": True, "b": None}

    @pytest.mark.parametrize("text", ["{'a': __import__('os')}", "[1, 2]", "", "{'a': 1", "print(1)"])
    def test_rejects_code_and_non_dicts(self, text):
        with pytest.raises(ContextError):
            ctx_mod.parse_text(text)

    def test_later_sources_override_and_dicts_merge(self, tmp_path):
        f = tmp_path / "c.yaml"
        f.write_text("docker_env_vars: {A: '1', B: '1'}\nguest_os: CENTOS\n")
        c, warnings = ctx_mod.build([("file", str(f)), ("text", "{'docker_env_vars': {'B': '2'}}")])
        assert c["docker_env_vars"] == {"A": "1", "B": "2"} and c["guest_os"] == "CENTOS"
        assert warnings == []

    def test_unknown_key_suggests(self):
        _, warnings = ctx_mod.build([("text", "{'docker_env_var': {}}")])
        assert warnings == ["unknown context key 'docker_env_var'; did you mean 'docker_env_vars'? (it still selects "
                            "Dockerfiles whose '# CONTEXT' header names it)"]

    def test_bad_values(self):
        with pytest.raises(ContextError, match="gpu_vendor"):
            ctx_mod.build([("text", "{'gpu_vendor': 'INTEL'}")])
        with pytest.raises(ContextError, match="timeout"):
            ctx_mod.build([("text", "{'timeout': 'soon'}")])

    def test_invalid_yaml_names_line(self, tmp_path):
        f = tmp_path / "c.yml"
        f.write_text("a: [1,\n")
        with pytest.raises(ContextError, match=r"invalid YAML at line \d+"):
            ctx_mod.load_file(f)


class TestRunRules:
    @pytest.mark.parametrize("model_t,cli,ctx,expected", [
        (-1, None, {}, 7200.0), (0, None, {}, None), (30, None, {}, 30.0),
        (30, 5, {}, 5.0), (30, 0, {}, None), (-1, None, {"timeout": 60}, 60.0),
    ])
    def test_timeouts(self, model_t, cli, ctx, expected):
        assert resolve_timeout(model_t, cli, Context(ctx)) == expected

    def test_script_argv_like_madengine(self):
        assert script_argv("scripts/m/run.sh", ["--x", "1"]) == (Path("scripts/m"), ("bash", "run.sh", "--x", "1"))
        assert script_argv("scripts/m/b.py", []) == (Path("scripts/m"), ("python3", "b.py"))
        assert script_argv("scripts/m", []) == (Path("scripts/m"), ("bash", "run.sh"))

    def test_env_layers(self):
        m = model(env_vars={"A": "model", "B": "model"}, multiple_results="o.csv")
        env = script_env(m, Context({"docker_env_vars": {"B": "ctx"}}), vendor="AMD", arch="gfx942",
                         system_ngpus=8, gpus=(2, 3), runtime_ngpus=2, use_devices=True, deployment="docker")
        assert env["A"] == "model" and env["B"] == "ctx"
        assert env["HIP_VISIBLE_DEVICES"] == "2,3" and env["MAD_OUTPUT_CSV"] == "o.csv"
        assert env["MAD_MULTI_NODE_RUNNER"] == "torchrun --standalone --nproc_per_node=2"
        assert env["MAD_SYSTEM_GPU_ARCHITECTURE"] == "gfx942"

    def test_skip_gpu_arch(self):
        m = model(skip_gpu_arch=("gfx90a",))
        assert skip_reason(m, "gfx90a", False)
        assert skip_reason(m, "gfx90a", True) is None
        assert skip_reason(m, "gfx942", False) is None


class TestEvaluate:
    def outcome(self, **kw):
        return RunOutcome(kw.pop("exit_code", 0), 1.0, **kw)

    def test_pass_needs_exit_zero_and_a_number(self, tmp_path):
        ok = [PerfLine(5.0, "5", "x", 1)]
        assert evaluate("m", self.outcome(), ok, "", tmp_path, 10)[0] == SUCCESS
        assert evaluate("m", self.outcome(exit_code=1), ok, "", tmp_path, 10)[:2] == (FAILURE, "exit code 1")
        assert evaluate("m", self.outcome(exit_code=-9), ok, "", tmp_path, 10)[1] == "killed by SIGKILL"
        assert "timed out after 10 s" == evaluate("m", self.outcome(timed_out=True), ok, "", tmp_path, 10)[1]
        assert "not a number" in evaluate("m", self.outcome(), [PerfLine(None, "NA", "x", 1)], "", tmp_path, 10)[1]
        assert "no performance line" in evaluate("m", self.outcome(), [], "", tmp_path, 10)[1]


class TestGpus:
    def test_parse_ids(self):
        assert gpus.parse_ids("0-3,6,2") == (0, 1, 2, 3, 6)
        with pytest.raises(UsageError):
            gpus.parse_ids("3-1")

    def test_pools(self):
        none = gpus.GpuInfo("NONE", ())
        assert gpus.resolve_pool("all", none, {}).mode == "none"
        virtual = gpus.resolve_pool("0-7", none, {})
        assert virtual.mode == "virtual" and len(virtual.ids) == 8
        amd = gpus.GpuInfo("AMD", tuple(range(8)))
        pool = gpus.resolve_pool("all", amd, {"HIP_VISIBLE_DEVICES": "1,3"})
        assert pool.ids == (1, 3) and pool.mode == "devices"
        with pytest.raises(UsageError, match="needs 4 GPUs"):
            gpus.wanted(4, pool)
        assert gpus.wanted(-1, pool) == 2
        with pytest.raises(UsageError, match="do not exist"):
            gpus.resolve_pool("9", amd, {})


class TestReport:
    def result(self, **kw) -> ModelResult:
        base = dict(model="m", status=SUCCESS, rows=[Row("m", 1234567.0, "tok/s", SUCCESS)], tags=("a", "b"),
                    n_gpus=2, gpus=(0, 1), runtime_ngpus=2, duration=1.5, executor="local")
        base.update(kw)
        return ModelResult(**base)

    def test_rows_keep_every_digit(self):
        (row,) = perf_rows(self.result(), {"machine_name": "h"})
        assert row["performance"] == "1234567" and row["tags"] == "a,b" and row["n_gpus"] == "2"

    def test_failure_row_has_no_number(self):
        (row,) = perf_rows(self.result(status=FAILURE, rows=[]), {})
        assert row["status"] == FAILURE and row["performance"] == ""

    def test_append_keeps_existing_header_and_is_atomic_per_batch(self, tmp_path):
        path = tmp_path / "perf.csv"
        path.write_text("model,performance,metric,status\n")
        threads = [threading.Thread(target=append_perf_csv, args=(path, perf_rows(self.result(model=f"m{i}"), {})))
                   for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows = list(csv.DictReader(path.open()))
        assert len(rows) == 20 and set(rows[0]) == {"model", "performance", "metric", "status"}

    def test_new_file_has_madengine_columns(self, tmp_path):
        append_perf_csv(tmp_path / "p.csv", perf_rows(self.result(), {}))
        assert next(csv.reader((tmp_path / "p.csv").open())) == list(PERF_COLUMNS)

    def test_junit_properties(self):
        props = dict(junit_properties(self.result()))
        assert props["performance"] == "1234567" and props["executor"] == "local"
