"""The `slurm` key deployment as data (no cluster): settings merged and validated per key, the
sbatch plan per key and per launcher, per-node results, preflight choices."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_madengine.context import Context
from pytest_madengine.errors import ExecutorError, UsageError
from pytest_madengine.executors.base import RunSpec
from pytest_madengine.executors.slurm import deploy, gather, jobscript, preflight
from pytest_madengine.executors.slurm import poller as P
from pytest_madengine.executors.slurm.executor import SlurmExecutor, SlurmPlan
from pytest_madengine.models import Model
from pytest_madengine.session import Options


class Partitions(P.Controller):
    def partitions(self) -> list[str]:
        self.calls["sinfo"] += 1
        return ["debug*", "batch"]


def executor(tmp_path: Path, ctx: dict[str, Any] | None = None) -> SlurmExecutor:
    return SlurmExecutor(Options(root=tmp_path, log_dir=tmp_path / "logs", work_dir=tmp_path / "work"),
                         Context(ctx if ctx is not None else {"slurm": {"partition": "debug"}}), "0123456789ab",
                         poller=P.SlurmPoller(Partitions()))


def spec(tmp_path: Path, *, raw: dict[str, Any] | None = None, n_gpus: int = 0, timeout: float | None = 60.0,
         ctx: dict[str, Any] | None = None, env: dict[str, str] | None = None,
         argv: tuple[str, ...] = ("bash", "run.sh")) -> RunSpec:
    raw = raw or {}
    model = Model(name="zoo/bert", source=tmp_path / "models.json", index=0, base_dir=tmp_path, scope=None,
                  dockerfile="docker/x", scripts="scripts/bert/run.sh", n_gpus=n_gpus, tags=("t",),
                  env_vars=raw.get("env_vars", {}), raw=raw)
    base = {"MAD_MODEL_NAME": "zoo/bert", "MAD_MULTI_NODE_RUNNER": "torchrun --standalone --nproc_per_node=1",
            "MAD_LAUNCHER": "torchrun", "K": "v w"}
    return RunSpec(model=model, argv=argv, env={**base, **(env or {})},
                   run_dir=tmp_path / "work" / "zoo" / "bert", workspace=tmp_path, timeout=timeout, gpus=(),
                   gpu_vendor="AMD", use_gpu_devices=False, context=Context(ctx or {}), run_id="0123456789ab")


def plan_of(tmp_path: Path, slurm: dict[str, Any] | None = None, *, card: dict[str, Any] | None = None,
            **kw: Any) -> SlurmPlan:
    ctx = {"slurm": {"partition": "debug", **(slurm or {})}}
    ctx.update(kw.pop("extra_ctx", {}))
    plan = executor(tmp_path, ctx).plan(spec(tmp_path, raw=card, ctx=ctx, **kw))
    assert isinstance(plan, SlurmPlan)
    return plan


def sbatch_lines(plan: SlurmPlan) -> list[str]:
    return [ln for ln in plan.batch_script.splitlines() if ln.startswith("#SBATCH")]


# ------------------------------------------------------------------- settings


def test_card_and_context_merge_key_by_key_context_wins() -> None:
    card = {"slurm": {"partition": "gpu", "nodes": 3, "gpus_per_node": 8, "env_vars": {"A": "1", "B": "2"}}}
    ctx = {"slurm": {"partition": "debug", "gpus_per_node": 0, "env_vars": {"B": "3"}}, "env_vars": {"C": "4"}}
    s = deploy.settings_for(card, ctx)
    assert (s.partition, s.nodes, s.gpus_per_node) == ("debug", 3, 0)
    assert dict(s.env_vars) == {"C": "4", "A": "1", "B": "3"}


@pytest.mark.parametrize(("raw", "message"), [
    ({"nodes": 0}, r"slurm.nodes \(context\) must be >= 1, got 0"),
    ({"nodes": "two"}, r"slurm.nodes \(context\) must be an integer, got 'two'"),
    ({"time": "1:75"}, r"slurm.time \(context\): '1:75': seconds must be below 60"),
    ({"partiton": "x"}, r"slurm.partiton \(context\): unknown key; did you mean 'partition'\?"),
    ({"exclusive": "maybe"}, r"slurm.exclusive \(context\) must be true or false"),
    ({"modules": "rocm"}, r"slurm.modules \(context\) must be a list"),
    ({"modules": ["rocm; rm -rf /"]}, r"slurm.modules \(context\): 'rocm; rm -rf /' is not a module name"),
    ({"env_vars": {"1X": "a"}}, r"slurm.env_vars \(context\): '1X' is not an environment variable name"),
    ({"shared_data": "data"}, r"slurm.shared_data \(context\): give an absolute path"),
    ({"nodelist": "n1;reboot"}, r"slurm.nodelist \(context\): 'n1;reboot' is not a node list"),
    ({"network_interface": "eth0 eth1"}, r"slurm.network_interface \(context\): 'eth0 eth1' is not"),
    ({"queue_timeout": -1}, r"slurm.queue_timeout \(context\) must be a positive number"),
    ({"gpus_per_node": -1}, r"slurm.gpus_per_node \(context\) must be >= 0, got -1"),
])
def test_each_bad_key_is_named(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        deploy.settings_for({}, {"slurm": raw})


def test_a_card_key_is_named_as_the_cards() -> None:
    with pytest.raises(UsageError, match=r"slurm.time \(model card\)"):
        deploy.settings_for({"slurm": {"time": "soon"}}, {})


def test_nodes_and_distributed_nnodes() -> None:
    assert deploy.settings_for({}, {}, {"nnodes": 2}).nodes == 2  # nodes defaults to distributed.nnodes
    with pytest.raises(UsageError, match=r"distributed.nnodes \(3\) and slurm.nodes \(2\) disagree"):
        deploy.settings_for({"slurm": {"nodes": 2}}, {}, {"nnodes": 3})


def test_time_defaults_follow_the_model_timeout() -> None:
    s = deploy.SlurmSettings()
    assert deploy.resolve_time(s, 60.0) == ("2", 120)  # whole minutes + 1: our timeout fires first
    assert deploy.resolve_time(s, None) == ("12:00:00", 43200)
    assert deploy.resolve_time(deploy.SlurmSettings(nodes=2), None) == ("24:00:00", 86400)
    assert deploy.resolve_time(deploy.SlurmSettings(time="00:05:00"), 60.0) == ("00:05:00", 300)


# ------------------------------------------------------------------- the plan, per key


def test_every_sbatch_key(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, {"nodes": 2, "gpus_per_node": 4, "time": "00:30:00", "account": "proj", "qos": "hi",
                              "constraint": "mi300&ib", "exclude": "n3", "nodelist": "n[1-2]",
                              "reservation": "maint", "mem": "64G", "mail_user": "a@b.c", "mail_type": "END,FAIL",
                              "modules": ["rocm/6.2", "gcc"]})
    assert sbatch_lines(plan) == [
        "#SBATCH --job-name=mad-0123456789ab-zoo_bert", "#SBATCH --nodes=2", "#SBATCH --ntasks=2",
        "#SBATCH --ntasks-per-node=1", "#SBATCH --time=00:30:00", "#SBATCH --gpus-per-node=4",
        "#SBATCH --partition=debug", "#SBATCH --exclusive", "#SBATCH --account=proj", "#SBATCH --qos=hi",
        '#SBATCH --constraint="mi300&ib"', "#SBATCH --exclude=n3", "#SBATCH --nodelist=n[1-2]",
        "#SBATCH --reservation=maint", "#SBATCH --mem=64G", "#SBATCH --mail-user=a@b.c",
        "#SBATCH --mail-type=END,FAIL",
        f"#SBATCH --output={tmp_path / 'logs' / 'zoo' / 'bert.slurm' / '%j.batch.out'}",
    ]
    assert "module load rocm/6.2 ||" in plan.batch_script and "module load gcc ||" in plan.batch_script
    assert plan.argv == ("sbatch", "--parsable", str(tmp_path / "logs" / "zoo" / "bert.slurm" / "job.sbatch"))
    assert plan.queue_timeout == 3600 and plan.deadline_s == 3600 + 60 + 120


def test_exclusive_off_and_no_gpus(tmp_path: Path) -> None:
    lines = sbatch_lines(plan_of(tmp_path, {"exclusive": False}))
    assert "#SBATCH --exclusive" not in lines and not any("gpus-per-node" in ln for ln in lines)


def test_gpus_default_to_the_models_not_a_preset(tmp_path: Path) -> None:
    assert "#SBATCH --gpus-per-node=2" in sbatch_lines(plan_of(tmp_path, n_gpus=2))
    with pytest.raises(ExecutorError, match="n_gpus -1 .* set slurm.gpus_per_node"):
        plan_of(tmp_path, n_gpus=-1)


def test_output_dir_from_context_and_card(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, {"output_dir": "slurm_results"})
    assert plan.cwd == str(tmp_path / "slurm_results" / "zoo" / "bert.slurm")
    with pytest.raises(ExecutorError, match=r"slurm.output_dir \(model card\): '/tmp/x' must be a path inside"):
        plan_of(tmp_path, card={"slurm": {"output_dir": "/tmp/x"}})
    with pytest.raises(ExecutorError, match=r"slurm.output_dir \(model card\): '../x' must be a path inside"):
        plan_of(tmp_path, card={"slurm": {"output_dir": "../x"}})


def test_card_partition_is_checked_against_the_cluster(tmp_path: Path) -> None:
    with pytest.raises(ExecutorError, match=r"slurm.partition \(model card\): 'gpu' is not a partition.*debug"):
        executor(tmp_path, {}).plan(spec(tmp_path, raw={"slurm": {"partition": "gpu"}}))
    with pytest.raises(UsageError, match=r"slurm.partition \(context\): 'dbug' .*did you mean 'debug'"):
        executor(tmp_path, {"slurm": {"partition": "dbug"}})


def test_slurm_args_and_slurm_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="'slurm_args' .* and 'slurm' .* both given"):
        executor(tmp_path, {"slurm": {}, "slurm_args": {"PARTITION": "debug", "TIME": "1"}})


def test_environment_is_quoted_and_user_values_win(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, {"env_vars": {"MSG": "a 'b' $(reboot)", "MAD_MULTI_NODE_RUNNER": "mine"},
                              "shared_data": "/data", "network_interface": "ib0"})
    task = plan.task_script
    assert "export MSG='a '\"'\"'b'\"'\"' $(reboot)'" in task
    assert "export MAD_MULTI_NODE_RUNNER=mine" in task
    assert "MAD_MULTI_NODE_RUNNER=torchrun" not in task  # the user's value wins over the launcher's
    assert "export MAD_DATAHOME=/data" in task and "export NCCL_SOCKET_IFNAME=ib0 GLOO_SOCKET_IFNAME=ib0" in task
    assert "export K='v w'" in task


def test_secrets_are_masked_in_the_rendering(tmp_path: Path) -> None:
    rendered = plan_of(tmp_path, {"env_vars": {"HF_TOKEN": "hunter2"}}).render()
    assert "hunter2" not in rendered and "HF_TOKEN=***" in rendered


# ------------------------------------------------------------------- per launcher


def run_case(task: str, rank: int, nodes: int, *, hosts: tuple[str, ...] = ("10.0.0.1", "10.0.0.2", "10.0.0.3",
                                                                                "10.0.0.4"),
             cwd: Path | None = None) -> dict[str, str]:
    """Run the task script's environment part for one node rank in bash, with SLURM's
    variables faked; the variables the model's script would see."""
    head = re.split(r"\n(?:exec|setsid) ", task, maxsplit=1)[0]
    head = head.replace('cd ', ': cd ', 1)  # no run folder here
    names = " ".join(f"n{i + 1}" for i in range(nodes))
    fake = (f"scontrol() {{ if [ \"$1\" = show ] && [ \"$2\" = hostnames ]; then printf '%s\\n' {names}; fi; }}\n"
            "ray() { :; }\n"
            "getent() { case \"$2\" in " + " ".join(f"n{i + 1}) echo '{h} n{i + 1}';;" for i, h in
                                                   enumerate(hosts[:nodes])) + " esac; }\n")
    script = fake + head + "\nenv -0\n"
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, cwd=cwd,
                         env={"SLURM_NODEID": str(rank), "SLURM_NNODES": str(nodes), "SLURM_JOB_NODELIST": "n[1-4]",
                              "SLURM_JOB_ID": "77", "PATH": "/usr/bin:/bin"}).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def test_torchrun_single_node_honours_the_launcher(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, {"nodes": 1, "gpus_per_node": 2}, extra_ctx={"distributed": {"launcher": "torchrun"}})
    env = run_case(plan.task_script, 0, 1)
    assert env["MAD_MULTI_NODE_RUNNER"] == "torchrun --standalone --nproc_per_node=2"
    assert env["MAD_LAUNCHER"] == "torchrun" and "MASTER_ADDR" not in env and env["MAD_RUNTIME_NGPUS"] == "2"


def test_torchrun_two_nodes_per_node_form(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, {"nodes": 2}, extra_ctx={"distributed": {"launcher": "torchrun", "port": 29600}})
    for rank in (0, 1):
        env = run_case(plan.task_script, rank, 2)
        assert env["MAD_MULTI_NODE_RUNNER"] == (f"torchrun --nnodes=2 --nproc_per_node=1 --node_rank={rank} "
                                                "--master_addr=10.0.0.1 --master_port=29600")
        assert (env["NODE_RANK"], env["NNODES"], env["MASTER_ADDR"], env["MASTER_PORT"]) == (str(rank), "2",
                                                                                            "10.0.0.1", "29600")
        assert env["MAD_DEPLOYMENT_TYPE"] == "slurm" and env["MAD_SLURM_JOB_ID"] == "77"


def test_megatron_and_torchtitan_variables_per_node(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, {"nodes": 2, "gpus_per_node": 4}, extra_ctx={"distributed": {"launcher": "megatron"}})
    env = run_case(plan.task_script, 1, 2)
    assert (env["TENSOR_MODEL_PARALLEL_SIZE"], env["PIPELINE_MODEL_PARALLEL_SIZE"], env["CONTEXT_PARALLEL_SIZE"]) == \
        ("4", "2", "1")
    assert "--node_rank=1" in env["MAD_MULTI_NODE_RUNNER"] and env["MAD_LAUNCHER"] == "megatron"
    plan = plan_of(tmp_path, {"nodes": 2}, card={"distributed": {"launcher": "torchtitan"}})
    env = run_case(plan.task_script, 0, 2)
    assert env["TORCHTITAN_FSDP_ENABLED"] == "1" and env["TORCHTITAN_PIPELINE_PARALLEL_SIZE"] == "2"


def test_hosts_reach_the_launcher_in_the_job(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, {"nodes": 3}, extra_ctx={"distributed": {"launcher": "sglang-disagg"}})
    env = run_case(plan.task_script, 2, 3)
    assert env["SGLANG_NODE_IPS"] == "10.0.0.1,10.0.0.2,10.0.0.3" and env["SGLANG_NODE_RANK"] == "2"
    assert not re.search(r"240\.77\.", " ".join(run_case(plan.task_script, 0, 3).values()))


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed", "megatron", "megatron-lm", "torchtitan", "primus",
                                      "vllm", "sglang", "sglang-disagg"])
def test_the_same_launcher_output_as_the_other_backends(tmp_path: Path, launcher: str) -> None:
    """Every variable of the launcher reaches each node (no allow-list), and its files: what
    launch() returns for that node rank with the hosts the job got is exactly what the node
    exports and writes."""
    from pytest_madengine.multinode.launchers import registry

    nodes = 3
    hosts = ("10.0.0.1", "10.0.0.2", "10.0.0.3")
    dist = {"launcher": launcher, "nnodes": nodes}
    plan = plan_of(tmp_path, {"nodes": nodes, "gpus_per_node": 2}, extra_ctx={"distributed": dist})
    for rank in range(nodes):
        folder = tmp_path / f"node{rank}"
        folder.mkdir()
        env = run_case(plan.task_script, rank, nodes, cwd=folder)
        topo = registry.topology(dist, gpus=2, node_rank=rank, master_addr=hosts[0], hosts=hosts)
        want = registry.launch(dist, topo, "zoo/bert")
        assert {k: env.get(k) for k in want.env} == dict(want.env), (launcher, rank)
        for name, text in want.files.items():
            assert (folder / name).read_text() == text, (launcher, rank, name)


def test_a_host_task_with_a_setup_ends_the_setups_daemons(tmp_path: Path) -> None:
    """vllm's Ray daemons leave their parent: on the host, setup and script run in a session of
    their own whose whole process group ends with the task (also on scancel's SIGTERM)."""
    plan = plan_of(tmp_path, {"nodes": 2}, extra_ctx={"distributed": {"launcher": "vllm"}})
    task = plan.task_script
    assert "\nexec " not in task and "ray start --head" in task
    tail = task[task.index("\nsetsid "):]
    assert tail.startswith("\nsetsid bash -c \"$MAD_TASK_SETUP\"'exec \"$@\"' mad-task ")
    assert "trap 'mad_end_group; exit 143' TERM INT" in tail and 'kill -KILL -- -"$MAD_GROUP"' in tail
    assert tail.rstrip().endswith('wait "$MAD_GROUP"; MAD_RC=$?\nmad_end_group\nexit "$MAD_RC"')
    plain = plan_of(tmp_path, {"nodes": 2}, extra_ctx={"distributed": {"launcher": "torchrun"}}).task_script
    assert "setsid" not in plain and "\nexec " in plain  # no setup: the script is the task


def test_mpirun_over_several_nodes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExecutorError, match="distributed.launcher mpirun starts every node's ranks"):
        plan_of(tmp_path, {"nodes": 2}, extra_ctx={"distributed": {"launcher": "mpirun"}})


def test_slurm_multi_wrapper(tmp_path: Path) -> None:
    card = {"env_vars": {"DOCKER_IMAGE_NAME": "rocm/sgl-dev:v1", "MODEL_NAME": "tiny"},
            "distributed": {"launcher": "slurm_multi", "sglang_disagg": {"prefill_nodes": 2, "decode_nodes": 1}},
            "slurm": {"nodes": 3, "results_dir": "out"}}
    plan = plan_of(tmp_path, card=card, argv=("bash", "run_disagg.slurm", "--x", "a b"),
                   env={"DOCKER_IMAGE_NAME": "rocm/sgl-dev:v1", "MODEL_NAME": "tiny"})
    text = plan.batch_script
    assert plan.task_script == "" and "#SBATCH --nodes=3" in text
    assert "export xP=2" in text and "export yD=1" in text and "export MODEL_NAME=tiny" in text
    pull = next(ln for ln in text.splitlines() if ln.startswith("srun "))
    assert pull.startswith('srun --nodes="$SLURM_NNODES" --ntasks="$SLURM_NNODES" --ntasks-per-node=1 bash -c ')
    assert "docker pull rocm/sgl-dev:v1 ||" in shlex.split(pull)[6]  # the tasks' pull, on every node
    assert text.rstrip().endswith("bash run_disagg.slurm --x 'a b'")
    assert plan.deploy is not None and plan.deploy.results_dir == tmp_path / "work" / "zoo" / "bert.slurm" / "node0" / "out"
    local = plan_of(tmp_path, card={**card, "env_vars": {"DOCKER_IMAGE_NAME": "mad-base:bookworm"}},
                    env={"DOCKER_IMAGE_NAME": "mad-base:bookworm"})
    assert "docker pull" not in local.batch_script  # a local image name is not pulled


# ------------------------------------------------------------------- results


def test_worker_nodes_pass_without_a_number_node0_reports(tmp_path: Path) -> None:
    logs = [tmp_path / "0.out", tmp_path / "1.out"]
    logs[0].write_text("performance: 10 samples_per_second\n")
    logs[1].write_text("performance: 99 samples_per_second\n")  # a worker's plain value: a property only
    got = gather.nodes(logs, [tmp_path / "a", tmp_path / "b"], "m", "")
    assert got.rows is None and not got.problem
    assert got.properties["node1_performance"] == "99 samples_per_second"


def test_per_rank_values_are_combined_across_nodes(tmp_path: Path) -> None:
    logs = [tmp_path / "0.out", tmp_path / "1.out"]
    logs[0].write_text("[rank0]: performance: 10 samples_per_second\n")
    logs[1].write_text("[rank1]: performance: 12 samples_per_second\n")
    got = gather.nodes(logs, [tmp_path / "a", tmp_path / "b"], "m", "")
    assert got.rows is not None and [(r.name, r.performance, r.metric) for r in got.rows] == \
        [("m", 22.0, "samples_per_second")]
    assert got.properties["aggregation"] == "sum"
    logs[1].write_text("no value\n")
    logs.append(tmp_path / "2.out")
    logs[2].write_text("[rank2]: performance: 12 samples_per_second\n")
    got = gather.nodes(logs, [tmp_path / "a", tmp_path / "b", tmp_path / "c"], "m", "")
    assert got.problem == "per-rank results are incomplete: node(s) [1] reported no per-rank values"


def test_slurm_multi_results_dir(tmp_path: Path) -> None:
    assert gather.slurm_multi(None, "m").rows is None  # the job's output decides
    got = gather.slurm_multi(tmp_path, "m")
    assert got.problem.startswith("slurm.results_dir: no perf*.csv written in")
    (tmp_path / "perf.csv").write_text("model,performance,metric,status\nm,3.5,req_per_s,SUCCESS\n")
    got = gather.slurm_multi(tmp_path, "m")
    assert got.rows is not None and [(r.name, r.performance) for r in got.rows] == [("m", 3.5)]
    assert gather.slurm_multi(tmp_path, "m", newer_than=2e9).problem  # an older file is not this run's


# ------------------------------------------------------------------- preflight


def test_preflight_choice() -> None:
    s = deploy.SlurmSettings(nodes=2, exclude="n4")
    states = preflight.parse_sinfo("n1 idle\nn2 drain*\nn3 idle\nn4 idle\nn10 alloc\n")
    v = preflight.choose(s, states, {"n1": "", "n3": ""})
    assert v.good == ("n1", "n3") and v.bad == {"n2": "state drain", "n10": "state alloc"} and not v.problem
    assert preflight.excluded(s, v) == "n4,n2,n10"
    v = preflight.choose(s, states, {"n1": "srun check failed: timeout", "n3": ""})
    assert v.problem.startswith("preflight: 1 healthy idle node(s) (n3) but the job needs slurm.nodes 2")


def test_preflight_commands() -> None:
    s = deploy.SlurmSettings(partition="debug", reservation="r", constraint="ib")
    assert preflight.sinfo_argv(s) == ["sinfo", "-h", "-N", "-o", "%N %t", "-p", "debug", "-C", "ib"]
    argv = preflight.srun_argv(s, "n1", "job-preflight")
    assert argv[0] == "srun" and "--nodelist=n1" in argv and "--reservation=r" in argv and argv[-1] == "true"
    assert shlex.join(argv)  # an argv, never a shell string


def test_shell_word() -> None:
    assert jobscript.shell_word("a b") == "'a b'"
    assert jobscript.shell_word("") == "''"
    assert jobscript.shell_word("--master_addr=240.77.0.0 --x") == "--master_addr=\"$MAD_HOST_0\"' --x'"
    assert jobscript.shell_word("240.77.0.0,240.77.1.2:6379") == '"$MAD_HOST_0",\"$MAD_HOST_258\":6379'
    assert jobscript.shell_word("1240.77.0.0") == "1240.77.0.0"


# ------------------------------------------------------------------- the deadline


class Forever(Partitions):
    """sbatch answers 41; the job then runs for ever (squeue RUNNING) until scancel."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled: list[str] = []

    def run(self, argv: list[str], *, timeout: float = 60.0, env: Any = None) -> str:
        self.calls[argv[0]] += 1
        return "41\n" if argv[0] == "sbatch" else ""

    def squeue(self, ids: list[str]) -> dict[str, Any]:
        from pytest_madengine.executors.slurm.records import JobRecord

        state = "CANCELLED" if "41" in self.cancelled else "RUNNING"
        return {"41": JobRecord(job_id="41", state=state, name="mad-0123456789ab-zoo_bert", nodes="n1",
                                partition="debug", start=1.0, source="squeue")}

    def sacct(self, ids: list[str]) -> dict[str, list[Any]]:
        from pytest_madengine.executors.slurm.records import JobRecord

        return {"41": [JobRecord(job_id="41", state="CANCELLED", name="mad-0123456789ab-zoo_bert", nodes="n1",
                                 partition="debug", exit_code="0:15", start=1.0, end=2.0, source="sacct")]}

    def scancel(self, ids: list[str]) -> None:
        self.cancelled += ids


def test_a_job_past_its_deadline_is_cancelled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No model timeout (0): the deadline (queue + the job's time limit + grace) still applies."""
    import dataclasses

    from pytest_madengine.executors.base import Cancel
    from pytest_madengine.executors.slurm import executor as ex_mod
    from pytest_madengine.output import OutputSink

    monkeypatch.setattr(ex_mod, "CANCEL_WAIT_S", 0.5)
    ctl = Forever()
    ex = SlurmExecutor(Options(root=tmp_path, log_dir=tmp_path / "logs", work_dir=tmp_path / "work"),
                       Context({"slurm": {"partition": "debug", "time": "5"}}), "0123456789ab",
                       poller=P.SlurmPoller(ctl, use_sacct=True))
    s = spec(tmp_path, timeout=None)
    s.run_dir.mkdir(parents=True)
    plan = ex.plan(s)
    assert plan.deadline_s == 3600 + 300 + 120  # time '5' minutes: the run's limit without a timeout
    sink = OutputSink(tmp_path / "m.log")
    out = ex.run(dataclasses.replace(plan, deadline_s=0.3), sink, Cancel())
    sink.close()
    assert out.problem.startswith("deadline: SLURM job(s) 41 not finished 0.3 s after submission")
    assert out.problem.endswith("cancelled") and ctl.cancelled == ["41"]
