"""Launchers as pure functions: golden runner strings and environments for every launcher,
one node and several, and validation errors that name the ``distributed`` key."""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from pytest_madengine.errors import UsageError
from pytest_madengine.multinode.launchers import deepspeed, mpirun, primus, registry, sglang_disagg, torchrun
from pytest_madengine.multinode.launchers.base import Launch, LauncherError, Topology, canonical, topology
from pytest_madengine.multinode.launchers.registry import LAUNCHERS, launch

ONE = Topology(nnodes=1, nproc_per_node=8, node_rank=0, master_addr="localhost", master_port=29500)
HOSTS = ("10.0.0.1", "10.0.0.2")
TWO = Topology(nnodes=2, nproc_per_node=8, node_rank=1, master_addr="10.0.0.1", master_port=29500, hosts=HOSTS)
TWO_NO_HOSTS = Topology(nnodes=2, nproc_per_node=4, node_rank=0, master_addr="head", master_port=1234)

MULTI_ENV = {"NNODES": "2", "NPROC_PER_NODE": "8", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1",
             "MASTER_PORT": "29500"}
TORCHRUN_ONE = "torchrun --standalone --nproc_per_node=8"
TORCHRUN_TWO = "torchrun --nnodes=2 --nproc_per_node=8 --node_rank=1 --master_addr=10.0.0.1 --master_port=29500"


def run(name: str, topo: Topology, model: str = "m", **settings: Any) -> Launch:
    return launch({"launcher": name, **settings}, topo, model)


def base_env(name: str, runner: str, multi: bool) -> dict[str, str]:
    env = {"MAD_MULTI_NODE_RUNNER": runner, "MAD_LAUNCHER": name}
    return {**env, **MULTI_ENV} if multi else env


class TestTorchrunFamily:
    def test_torchrun(self):
        assert run("torchrun", ONE) == Launch(TORCHRUN_ONE, base_env("torchrun", TORCHRUN_ONE, False))
        assert run("torchrun", TWO) == Launch(TORCHRUN_TWO, base_env("torchrun", TORCHRUN_TWO, True))

    def test_default_launcher_is_torchrun(self):
        assert launch({}, ONE, "m").env["MAD_LAUNCHER"] == "torchrun"
        assert launch({"launcher": " "}, ONE, "m").runner == TORCHRUN_ONE

    def test_the_runner_survives_unquoted_expansion(self):
        # scripts run `$MAD_MULTI_NODE_RUNNER train.py`: split on blanks, no quote removal
        assert shlex.split(TORCHRUN_TWO) == TORCHRUN_TWO.split()
        assert run("torchrun", TWO).runner.split() == shlex.split(run("torchrun", TWO).runner)

    @pytest.mark.parametrize("name", ["megatron", "megatron-lm"])
    def test_megatron(self, name):
        one = run(name, ONE)
        assert one.runner == TORCHRUN_ONE
        assert one.env == {**base_env(name, TORCHRUN_ONE, False), "TENSOR_MODEL_PARALLEL_SIZE": "8",
                           "PIPELINE_MODEL_PARALLEL_SIZE": "1", "CONTEXT_PARALLEL_SIZE": "1"}
        two = run(name, TWO)
        assert two.runner == TORCHRUN_TWO
        assert two.env == {**base_env(name, TORCHRUN_TWO, True), "TENSOR_MODEL_PARALLEL_SIZE": "8",
                           "PIPELINE_MODEL_PARALLEL_SIZE": "2", "CONTEXT_PARALLEL_SIZE": "1"}
        assert any("dead" in n for n in two.notes)

    def test_torchtitan(self):
        assert run("torchtitan", ONE).env == {
            **base_env("torchtitan", TORCHRUN_ONE, False), "TORCHTITAN_TENSOR_PARALLEL_SIZE": "8",
            "TORCHTITAN_PIPELINE_PARALLEL_SIZE": "1", "TORCHTITAN_FSDP_ENABLED": "0",
            "TORCHTITAN_CONTEXT_PARALLEL_SIZE": "1"}
        two = run("torchtitan", TWO)
        assert two.runner == TORCHRUN_TWO
        assert two.env == {
            **base_env("torchtitan", TORCHRUN_TWO, True), "TORCHTITAN_TENSOR_PARALLEL_SIZE": "8",
            "TORCHTITAN_PIPELINE_PARALLEL_SIZE": "2", "TORCHTITAN_FSDP_ENABLED": "1",
            "TORCHTITAN_CONTEXT_PARALLEL_SIZE": "1"}

    def test_launch_is_read_only_and_hashable(self):
        got = run("torchrun", TWO)
        with pytest.raises(TypeError):
            got.env["X"] = "1"  # type: ignore[index]
        assert hash(got) == hash(run("torchrun", TWO)) and got == run("torchrun", TWO)

    def test_backend_is_exported_for_any_launcher(self):
        assert run("torchrun", ONE, backend="gloo").env["DISTRIBUTED_BACKEND"] == "gloo"
        assert run("vllm", TWO, backend="nccl").env["DISTRIBUTED_BACKEND"] == "nccl"


class TestDeepSpeed:
    def test_single_node(self):
        r = "deepspeed --num_gpus=8"
        assert run("deepspeed", ONE) == Launch(r, base_env("deepspeed", r, False))

    def test_multi_node_no_ssh_with_hostfile_in_the_run_folder(self):
        got = run("deepspeed", TWO)
        r = ("deepspeed --hostfile=hostfile --no_ssh --node_rank=1 --num_nodes=2 --num_gpus=8 "
             "--master_addr=10.0.0.1 --master_port=29500")
        assert got.runner == r
        assert got.env == base_env("deepspeed", r, True)
        assert got.files == {"hostfile": "10.0.0.1 slots=8\n10.0.0.2 slots=8\n"}
        assert got.setup == ()
        assert any("run folder" in n for n in got.notes)

    def test_unknown_or_repeated_hosts_get_placeholder_names(self):
        assert run("deepspeed", TWO_NO_HOSTS).files == {"hostfile": "node0 slots=4\nnode1 slots=4\n"}
        same = Topology(2, 2, 0, "localhost", 29500, hosts=("localhost", "localhost"))
        text, real = deepspeed.hostfile(same)
        assert (text, real) == ("node0 slots=2\nnode1 slots=2\n", False)
        assert any("labels" in n for n in run("deepspeed", same).notes)


class TestPrimus:
    def test_defaults(self):
        got = run("primus", ONE)
        assert got == Launch("", {**base_env("primus", "", False), "PRIMUS_CONFIG_PATH": "exp_pretrain.yaml",
                                  "GPUS_PER_NODE": "8"})

    def test_settings_and_multi_node(self):
        got = run("primus", TWO, primus={"config_path": "examples/a.yaml", "cli_extra": "--x 1",
                                        "backend": "megatron"})
        assert got.runner == ""
        assert got.env == {**base_env("primus", "", True), "PRIMUS_CONFIG_PATH": "examples/a.yaml",
                           "PRIMUS_CLI_EXTRA": "--x 1", "BACKEND": "megatron", "GPUS_PER_NODE": "8"}

    @pytest.mark.parametrize(("model", "backend"), [
        ("primus_pretrain/torchtitan_MI300X_qwen3_4B-pretrain", "torchtitan"),
        ("primus_pretrain/maxtext_MI300X_llama", "MaxText"),
        ("primus_pretrain/megatron_MI355X_x", "megatron"),
        ("primus_pretrain/megatron_bridge_MI355X_x", "megatron_bridge"),
        ("primus_pretrain/moe_package_MI355X_x", "moe_package"),
        ("primus_pretrain/unknown_x", ""),
        ("torchtitan_MI300X", ""),
    ])
    def test_backend_from_model_name(self, model, backend):
        assert primus.backend_from_model(model) == backend
        assert run("primus", ONE, model).env.get("BACKEND", "") == backend

    def test_explicit_backend_wins(self):
        assert run("primus", ONE, "primus_pretrain/maxtext_x", primus={"backend": "torchtitan"}).env["BACKEND"] \
            == "torchtitan"


class TestVllm:
    def test_single_node(self):
        assert run("vllm", ONE) == Launch("", {
            **base_env("vllm", "", False), "VLLM_TENSOR_PARALLEL_SIZE": "8", "VLLM_PIPELINE_PARALLEL_SIZE": "1",
            "VLLM_DISTRIBUTED_BACKEND": "auto"})

    def test_multi_node_worker_joins_ray(self):
        got = run("vllm", TWO)
        assert got.runner == ""
        assert got.env == {**base_env("vllm", "", True), "VLLM_TENSOR_PARALLEL_SIZE": "8",
                           "VLLM_PIPELINE_PARALLEL_SIZE": "2", "VLLM_DISTRIBUTED_BACKEND": "ray",
                           "RAY_ADDRESS": "10.0.0.1:6379", "VLLM_HOST_IP": "10.0.0.2"}
        assert got.setup == (("ray", "start", "--address=10.0.0.1:6379", "--num-gpus=8",
                               "--node-ip-address=10.0.0.2"),)
        assert any("PP 1" in n for n in got.notes)

    def test_multi_node_head(self):
        got = run("vllm", TWO_NO_HOSTS)
        assert got.setup == (("ray", "start", "--head", "--port=6379", "--num-gpus=4"),)
        assert got.env["RAY_ADDRESS"] == "head:6379"
        assert "VLLM_HOST_IP" not in got.env  # hosts not known

    def test_host_names_are_not_host_ips(self):
        topo = Topology(2, 1, 1, "a", 29500, hosts=("a", "b"))
        got = run("vllm", topo)
        assert "VLLM_HOST_IP" not in got.env
        assert not any(a.startswith("--node-ip-address") for a in got.setup[0])  # Ray resolves names itself


class TestSglang:
    def test_single_node(self):
        assert run("sglang", ONE) == Launch("", {
            **base_env("sglang", "", False), "SGLANG_TENSOR_PARALLEL_SIZE": "8",
            "SGLANG_PIPELINE_PARALLEL_SIZE": "1"})

    def test_multi_node(self):
        assert run("sglang", TWO).env == {
            **base_env("sglang", "", True), "SGLANG_TENSOR_PARALLEL_SIZE": "8",
            "SGLANG_PIPELINE_PARALLEL_SIZE": "1", "NCCL_INIT_ADDR": "10.0.0.1:29500", "SGLANG_NNODES": "2",
            "SGLANG_NODE_RANK": "1", "SGLANG_HOST_IP": "10.0.0.2"}
        assert "SGLANG_HOST_IP" not in run("sglang", TWO_NO_HOSTS).env


def topo(n: int, rank: int, hosts: bool = True) -> Topology:
    return Topology(n, 8, rank, "h0", 29500, hosts=tuple(f"h{i}" for i in range(n)) if hosts else ())


class TestSglangDisagg:
    def test_env_of_each_role(self):
        envs = [run("sglang-disagg", topo(4, r)).env for r in range(4)]
        assert envs[0] == {
            "MAD_MULTI_NODE_RUNNER": "", "MAD_LAUNCHER": "sglang-disagg", "NNODES": "4", "NPROC_PER_NODE": "8",
            "NODE_RANK": "0", "MASTER_ADDR": "h0", "MASTER_PORT": "29500", "SGLANG_DISAGG_MODE": "enabled",
            "SGLANG_DISAGG_PREFILL_NODES": "1", "SGLANG_DISAGG_DECODE_NODES": "2",
            "SGLANG_DISAGG_TOTAL_NODES": "4", "SGLANG_TP_SIZE": "8", "SGLANG_NODE_RANK": "0",
            "SGLANG_DISAGG_ROLE": "proxy", "SGLANG_NODE_IPS": "h0,h1,h2,h3"}
        assert [e["SGLANG_DISAGG_ROLE"] for e in envs] == ["proxy", "prefill", "decode", "decode"]
        assert [e["SGLANG_NODE_RANK"] for e in envs] == ["0", "1", "2", "3"]

    def test_alias_and_no_hosts(self):
        got = run("sglang_disagg", topo(3, 2, hosts=False))
        assert got.env["MAD_LAUNCHER"] == "sglang-disagg" and got.runner == ""
        assert "SGLANG_NODE_IPS" not in got.env
        assert any("our addition" in n for n in got.notes)

    @pytest.mark.parametrize(("n", "given", "want"), [
        (3, {}, (1, 1)), (4, {}, (1, 2)), (6, {}, (2, 3)), (11, {}, (4, 6)),
        (6, {"prefill_nodes": 3, "decode_nodes": 2}, (3, 2)),
        (6, {"prefill_nodes": 4}, (4, 1)), (6, {"decode_nodes": 4}, (1, 4)),
    ])
    def test_split(self, n, given, want):
        assert sglang_disagg.split({"sglang_disagg": given}, n) == want

    def test_two_nodes_are_too_few(self):
        with pytest.raises(LauncherError, match=r"distributed\.nnodes is 2: .*at least 3 nodes"):
            run("sglang-disagg", topo(2, 0))

    def test_bad_split_names_the_keys(self):
        with pytest.raises(LauncherError, match=r"distributed\.sglang_disagg\.prefill_nodes \(2\) \+ "
                                                r"distributed\.sglang_disagg\.decode_nodes \(2\) .* \(4\)"):
            run("sglang-disagg", topo(4, 0), sglang_disagg={"prefill_nodes": 2, "decode_nodes": 2})
        with pytest.raises(LauncherError, match=r"distributed\.sglang_disagg\.decode_nodes \(3\) leaves no node"):
            run("sglang-disagg", topo(4, 0), sglang_disagg={"decode_nodes": 3})
        with pytest.raises(LauncherError, match=r"distributed\.sglang_disagg\.prefill_nodes is out of range: 0"):
            run("sglang-disagg", topo(4, 0), sglang_disagg={"prefill_nodes": 0})


class TestSlurmMulti:
    def test_no_runner_and_xp_yd(self):
        plain = run("slurm_multi", ONE)
        assert (plain.runner, plain.env, plain.files, plain.setup) == ("", base_env("slurm_multi", "", False), {}, ())
        got = run("slurm-multi", ONE, sglang_disagg={"prefill_nodes": 2, "decode_nodes": "3"})
        assert got.env == {**base_env("slurm_multi", "", False), "xP": "2", "yD": "3"}
        assert run("slurm_multi", ONE, sglang_disagg={"decode_nodes": 2}).env["xP"] == "1"  # madengine's default
        assert "xP" not in run("slurm_multi", ONE, sglang_disagg={}).env


class TestMpirun:
    def test_single_and_multi_node(self):
        r1 = "mpirun -np 8 --host localhost:8"
        assert run("mpirun", ONE).env == {**base_env("mpirun", r1, False), **mpirun.ROOT_ENV}
        assert run("mpirun", ONE).runner == r1
        head = Topology(2, 4, 0, "a", 29500, hosts=("a", "b"))
        r2 = "mpirun -np 8 --host a:4,b:4"
        got = run("mpirun", head)
        assert got.runner == r2
        assert got.env == {"MAD_MULTI_NODE_RUNNER": r2, "MAD_LAUNCHER": "mpirun", "NNODES": "2",
                           "NPROC_PER_NODE": "4", "NODE_RANK": "0", "MASTER_ADDR": "a", "MASTER_PORT": "29500",
                           **mpirun.ROOT_ENV}

    def test_needs_hosts_and_node_zero(self):
        with pytest.raises(LauncherError, match=r"distributed\.launcher mpirun with distributed\.nnodes 2 needs"):
            run("mpirun", TWO_NO_HOSTS)
        with pytest.raises(LauncherError, match="node 0 only, not with node_rank 1"):
            run("mpirun", TWO)

    def test_1x_functions_still_there(self):
        assert mpirun.single_node(2) == "mpirun -np 2"
        assert torchrun.single_node(4) == "torchrun --standalone --nproc_per_node=4"


class TestRegistry:
    def test_names_and_aliases(self):
        assert set(LAUNCHERS) == {"torchrun", "deepspeed", "megatron", "megatron-lm", "torchtitan", "primus",
                                  "vllm", "sglang", "sglang-disagg", "slurm_multi", "mpirun"}
        assert canonical("sglang_disagg") == "sglang-disagg"
        assert canonical("slurm-multi") == "slurm_multi"
        assert canonical(" TorchRun ") == "torchrun"
        assert registry.canonical is canonical

    @pytest.mark.parametrize("name", sorted(LAUNCHERS))
    def test_every_launcher_sets_runner_and_name(self, name):
        got = launch({"launcher": name}, topo(3, 0), "m")
        assert got.env["MAD_MULTI_NODE_RUNNER"] == got.runner
        assert got.env["MAD_LAUNCHER"] == name
        assert {"NNODES", "NPROC_PER_NODE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"} <= set(got.env)
        assert all(isinstance(v, str) for v in got.env.values())

    def test_unknown_launcher_suggests_close_names(self):
        with pytest.raises(LauncherError, match=r"distributed\.launcher: unknown launcher 'torchrn'; "
                                                r"did you mean 'torchrun' or 'torchtitan'\? \(known: torchrun, ") as e:
            launch({"launcher": "torchrn"}, ONE, "m")
        assert isinstance(e.value, UsageError)
        with pytest.raises(LauncherError, match=r"did you mean 'sglang-disagg'"):
            canonical("sglang-disag")
        with pytest.raises(LauncherError, match=r"did you mean 'deepspeed'\?"):
            canonical("deepspeeed")
        with pytest.raises(LauncherError, match=r"distributed\.launcher must be a string"):
            canonical(3)

    def test_topology_from_settings(self):
        assert topology({}, gpus=0) == Topology(1, 1, 0, "localhost", 29500)
        assert topology({"nnodes": "2", "nproc_per_node": 4, "master_port": 1234}, gpus=8, node_rank=1,
                        master_addr="a", hosts=["a", "b"]) == Topology(2, 4, 1, "a", 1234, ("a", "b"))
        assert topology({"port": 99, "master_port": 99.0}, gpus=2).master_port == 99


class TestValidation:
    @pytest.mark.parametrize(("settings", "pattern"), [
        ({"nnodes": 0}, r"distributed\.nnodes is out of range: 0 \(must be >= 1\)"),
        ({"nnodes": "two"}, r"distributed\.nnodes must be an integer, got 'two'"),
        ({"nnodes": True}, r"distributed\.nnodes must be an integer"),
        ({"nproc_per_node": 1.5}, r"distributed\.nproc_per_node must be an integer"),
        ({"port": 0}, r"distributed\.port is out of range: 0 \(must be 1\.\.65535\)"),
        ({"master_port": 70000}, r"distributed\.master_port is out of range: 70000"),
        ({"port": 1, "master_port": 2}, r"distributed\.port \(1\) and distributed\.master_port \(2\) disagree"),
        ({"backend": ["nccl"]}, r"distributed\.backend must be a string"),
        ({"primus": "x"}, r"distributed\.primus must be a dict"),
        ({"primus": {"config_path": {}}}, r"distributed\.primus\.config_path must be a string"),
        ({"sglang_disagg": {"decode_nodes": -1}}, r"distributed\.sglang_disagg\.decode_nodes is out of range"),
    ])
    def test_settings_errors_name_the_key(self, settings, pattern):
        with pytest.raises(LauncherError, match=pattern):
            launch(settings, ONE, "m")
        with pytest.raises(LauncherError, match=pattern):
            topology(settings, gpus=1)

    @pytest.mark.parametrize(("t", "pattern"), [
        (Topology(2, 8, 2, "a", 29500), r"node_rank 2 is out of range for distributed\.nnodes 2 \(ranks 0\.\.1\)"),
        (Topology(0, 8, 0, "a", 29500), r"distributed\.nnodes is out of range: 0"),
        (Topology(1, 0, 0, "a", 29500), r"distributed\.nproc_per_node is out of range: 0"),
        (Topology(1, 8, 0, "a", 65536), r"distributed\.port is out of range: 65536"),
        (Topology(2, 8, 0, "a b", 29500), r"master_addr must be a host name or address, got 'a b'"),
        (Topology(2, 8, 0, "$(reboot)", 29500), r"master_addr must be a host name"),
        (Topology(2, 8, 0, "a", 29500, hosts=("a",)), r"distributed\.nnodes is 2 but 1 hosts are known"),
        (Topology(2, 8, 0, "a", 29500, hosts=("a", "-x")), r"host of node 1 must be a host name"),
    ])
    def test_topology_errors(self, t, pattern):
        with pytest.raises(LauncherError, match=pattern):
            launch({}, t, "m")

    def test_distributed_must_be_a_dict(self):
        with pytest.raises(LauncherError, match="context key 'distributed' must be a dict"):
            launch(["torchrun"], ONE, "m")  # type: ignore[arg-type]

    def test_ipv6_master_is_accepted(self):
        t = Topology(2, 1, 0, "fe80::1%eth0", 29500)
        assert "--master_addr=fe80::1%eth0" in run("torchrun", t).runner


# --- the job's size on SLURM -------------------------------------------------------------------

def test_slurm_nodes_reads_the_card_under_the_context() -> None:
    from pytest_madengine.executors.slurm.deploy import job_nodes as slurm_nodes
    assert slurm_nodes({"slurm": {"nodes": 3}}, {}) == 3
    assert slurm_nodes({"slurm": {"nodes": 3}}, {"slurm": {"nodes": "4"}}) == 4
    assert slurm_nodes({}, {"slurm": {"partition": "p"}}) is None
    for bad in (0, -1, True, "two", 2.5, None):  # left to the deployment's own validation
        assert slurm_nodes({"slurm": {"nodes": bad}}, {}) is None
    assert slurm_nodes({"slurm": "nodes=3"}, {}) is None


def test_the_slurm_job_size_is_the_launchers_node_count() -> None:
    """A card with ``slurm.nodes: 3`` and sglang-disagg is valid on SLURM (the job has 3 nodes);
    an explicit ``distributed.nnodes`` still wins."""
    from pytest_madengine.multinode.deployment import launch_for
    from pytest_madengine.multinode.settings import MultiNode
    mn = MultiNode()
    card = {"distributed": {"launcher": "sglang-disagg"}, "slurm": {"nodes": 3}}
    with pytest.raises(LauncherError, match="needs at least 3 nodes"):
        launch_for(card, {}, mn, 1, "m")
    got = launch_for(card, {}, mn, 1, "m", job_nodes=3)
    assert got is not None and got.env["SGLANG_DISAGG_TOTAL_NODES"] == "3"
    pinned = {"distributed": {"launcher": "torchrun", "nnodes": 1}}
    got = launch_for(pinned, {}, mn, 1, "m", job_nodes=2)
    assert got is not None and "--standalone" in got.runner
