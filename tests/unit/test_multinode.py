"""Pure parts of multi-node runs: multi_node_args, runner strings, per-rank values, the barrier
protocol (threads on loopback), the shared-mirror check."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from pytest_madengine.context import Context
from pytest_madengine.errors import MetricsError, UsageError
from pytest_madengine.models import Model
from pytest_madengine.multinode import rendezvous
from pytest_madengine.multinode import settings as multinode
from pytest_madengine.multinode.launchers import mpirun, torchrun
from pytest_madengine.multinode.node import NodeRun, check_mirror, nothing_reported
from pytest_madengine.multinode.ranks import RankValue, combine, rank_file_values, rank_files, rank_lines, rank_tag
from pytest_madengine.multinode.settings import Host, MultiNode, from_context, launch_env, parse_hosts
from pytest_madengine.results.result import FAILURE, SUCCESS, ModelResult, Row
from pytest_madengine.session import script_env


@pytest.fixture
def net(tmp_path: Path) -> Path:
    """A fake /sys/class/net."""
    d = tmp_path / "net"
    for name in ("lo", "eth0", "eth1", "ib0", "veth-a"):
        (d / name).mkdir(parents=True)
    return d


def mn(args: dict | None = None, net_dir: Path | None = None, **top) -> MultiNode:
    ctx = dict(top)
    if args is not None:
        ctx["multi_node_args"] = args
    return from_context(ctx, net_dir=net_dir or Path("/nonexistent-net"))


def model(**kw) -> Model:
    base = dict(name="m", source=Path("models.json"), index=0, base_dir=Path("."), scope=None,
                dockerfile="docker/d", scripts="scripts/m/run.sh", n_gpus=1, tags=("t",))
    base.update(kw)
    return Model(**base)


class TestMultiNodeArgs:
    def test_absent_is_single_node(self):
        m = mn()
        assert not m.configured and not m.needs_barrier and m.nnodes == 1
        assert launch_env(m, 4) == {}

    def test_madengine_1x_defaults(self, net):
        m = mn({"NNODES": 1}, net)
        assert (m.runner, m.master_addr, m.master_port, m.nnodes, m.node_rank) == ("torchrun", "localhost", 6006, 1, 0)
        assert m.rendezvous_port == 6007 and m.rendezvous_timeout == 300
        assert m.configured and not m.needs_barrier

    def test_strings_and_numbers(self, net):
        m = mn({"RUNNER": "TorchRun", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "NNODES": "4",
                "NODE_RANK": 3.0, "GLOO_SOCKET_IFNAME": "eth0", "NCCL_SOCKET_IFNAME": "eth"}, net,
               rendezvous_port="29600", rendezvous_timeout="12.5")
        assert (m.runner, m.master_port, m.nnodes, m.node_rank) == ("torchrun", 29500, 4, 3)
        assert m.rendezvous_port == 29600 and m.rendezvous_timeout == 12.5 and m.needs_barrier
        assert m.env() == {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "NNODES": "4", "NODE_RANK": "3",
                           "NCCL_SOCKET_IFNAME": "eth", "GLOO_SOCKET_IFNAME": "eth0"}
        assert m.properties() == {"node_rank": "3", "master_addr": "10.0.0.1"}  # nnodes, launcher: typed fields

    def test_lower_case_keys(self, net):
        assert mn({"nnodes": 2, "node_rank": 1}, net).node_rank == 1

    @pytest.mark.parametrize("args, key", [
        ({"NNODES": 2, "NODE_RANK": 2}, "NODE_RANK"),
        ({"NNODES": 2, "NODE_RANK": -1}, "NODE_RANK"),
        ({"NODE_RANK": "one"}, "NODE_RANK"),
        ({"NNODES": 0}, "NNODES"),
        ({"NNODES": True}, "NNODES"),
        ({"MASTER_PORT": 0}, "MASTER_PORT"),
        ({"MASTER_PORT": 70000}, "MASTER_PORT"),
        ({"MASTER_PORT": "http"}, "MASTER_PORT"),
        ({"MASTER_PORT": 1.5}, "MASTER_PORT"),
        ({"RUNNER": "srun"}, "RUNNER"),
        ({"GLOO_SOCKET_IFNAME": "eth9"}, "GLOO_SOCKET_IFNAME"),
        ({"GLOO_SOCKET_IFNAME": "eth"}, "GLOO_SOCKET_IFNAME"),  # gloo: exact names
        ({"GLOO_SOCKET_IFNAME": "eth0,wlan0"}, "GLOO_SOCKET_IFNAME"),
        ({"NCCL_SOCKET_IFNAME": "enp"}, "NCCL_SOCKET_IFNAME"),
        ({"NCCL_SOCKET_IFNAME": "=eth"}, "NCCL_SOCKET_IFNAME"),  # '=' means exact
        ({"MASTER_ADDR": "a b"}, "MASTER_ADDR"),
        ({"MASTER_ADR": "x"}, "MASTER_ADR"),
        ({"HOST_LIST": "a:0"}, "HOST_LIST"),
        ({"MAD_RUNTIME_NGPUS": 0}, "MAD_RUNTIME_NGPUS"),
        ({"HOSTFILE": "/no/such/hostfile", "RUNNER": "mpirun"}, "HOSTFILE"),
    ])
    def test_errors_name_the_key(self, net, args, key):
        with pytest.raises(UsageError, match=key):
            mn(args, net)

    def test_unknown_key_suggests(self, net):
        with pytest.raises(UsageError, match="did you mean 'MASTER_ADDR'"):
            mn({"MASTER_ADR": "x"}, net)

    def test_interface_message_lists_what_exists(self, net):
        with pytest.raises(UsageError, match=r"no network interface 'eth9' on this host \(interfaces: eth0, eth1"):
            mn({"GLOO_SOCKET_IFNAME": "eth9"}, net)

    def test_nccl_syntax(self, net):
        assert mn({"NCCL_SOCKET_IFNAME": "eth"}, net).nccl_socket_ifname == "eth"  # prefix
        assert mn({"NCCL_SOCKET_IFNAME": "=eth0"}, net).nccl_socket_ifname == "=eth0"
        assert mn({"NCCL_SOCKET_IFNAME": "^docker,lo"}, net).nccl_socket_ifname == "^docker,lo"  # exclusions
        assert mn({"NCCL_SOCKET_IFNAME": "ib,eth"}, net).nccl_socket_ifname == "ib,eth"

    def test_real_host_interfaces(self):
        assert "lo" in multinode.host_interfaces()
        assert from_context({"multi_node_args": {"GLOO_SOCKET_IFNAME": "lo"}}).gloo_socket_ifname == "lo"

    def test_rendezvous_settings(self, net):
        assert mn({"MASTER_PORT": 65535}, net).rendezvous_port == 65534
        with pytest.raises(UsageError, match="rendezvous_port"):
            mn({"MASTER_PORT": 7000}, net, rendezvous_port=7000)
        with pytest.raises(UsageError, match="rendezvous_port"):
            mn({"MASTER_PORT": 7000}, net, rendezvous_port=0)
        for bad in (0, -1, "soon", True):
            with pytest.raises(UsageError, match="rendezvous_timeout"):
                mn({}, net, rendezvous_timeout=bad)

    def test_mpirun_rules(self, net):
        with pytest.raises(UsageError, match="HOST_LIST"):
            mn({"RUNNER": "mpirun", "NNODES": 2}, net)
        with pytest.raises(UsageError, match="node 0"):
            mn({"RUNNER": "mpirun", "NNODES": 2, "NODE_RANK": 1, "HOST_LIST": "a:1,b:1"}, net)
        with pytest.raises(UsageError, match="not both"):
            mn({"RUNNER": "mpirun", "HOST_LIST": "a", "HOSTS": "b"}, net)
        m = mn({"RUNNER": "mpirun", "NNODES": 2, "HOSTS": ["a:4", "b"]}, net)
        assert m.hosts == (Host("a", 4), Host("b")) and not m.needs_barrier
        assert mn({"HOST_LIST": "a:1"}, net).warnings  # torchrun ignores it, and says so

    def test_parse_hosts(self):
        assert parse_hosts("HOST_LIST", "n1:8, n2:8") == (Host("n1", 8), Host("n2", 8))
        assert parse_hosts("HOST_LIST", "n1 n2") == (Host("n1"), Host("n2"))
        assert parse_hosts("HOST_LIST", "") == ()
        with pytest.raises(UsageError, match="HOST_LIST"):
            parse_hosts("HOST_LIST", {"n1": 8})


class TestRunners:
    def test_torchrun_single_node_is_unchanged(self):
        assert torchrun.single_node(0) == "torchrun --standalone --nproc_per_node=1"
        assert torchrun.single_node(8) == "torchrun --standalone --nproc_per_node=8"

    def test_torchrun_madengine_1x_form(self, net):
        m = mn({"MASTER_ADDR": "node0", "MASTER_PORT": 29500, "NNODES": 2, "NODE_RANK": 1}, net)
        assert torchrun.multi_node(m, 8) == ("torchrun --nproc_per_node 8 --nnodes 2 --node_rank 1 "
                                             "--master_addr node0 --master_port 29500")
        assert torchrun.multi_node(m, 0).startswith("torchrun --nproc_per_node 1 ")  # no GPUs: one process
        m2 = mn({"MAD_RUNTIME_NGPUS": "3"}, net)
        assert torchrun.multi_node(m2, 8).startswith("torchrun --nproc_per_node 3 --nnodes 1 --node_rank 0 ")

    def test_torchrun_quotes(self, net):
        m = mn({"MASTER_ADDR": "$(reboot)"}, net)
        assert "'$(reboot)'" in torchrun.multi_node(m, 1)

    def test_mpirun(self, net):
        assert mpirun.single_node(2) == "mpirun -np 2"
        assert mpirun.multi_node(mn({"RUNNER": "mpirun", "MAD_RUNTIME_NGPUS": 2}, net), 0) == "mpirun -np 2"
        m = mn({"RUNNER": "mpirun", "NNODES": 2, "HOST_LIST": "a,b:2", "GLOO_SOCKET_IFNAME": "eth0"}, net)
        assert mpirun.multi_node(m, 4) == "mpirun -np 8 --host a:4,b:2 -x GLOO_SOCKET_IFNAME"
        hf = net / "hosts"
        hf.write_text("a slots=4\n")
        m = mn({"RUNNER": "mpirun", "NNODES": 2, "HOSTFILE": str(hf)}, net)
        assert mpirun.multi_node(m, 4) == f"mpirun -np 8 --hostfile {hf}"

    def test_launch_env(self, net):
        m = mn({"MASTER_ADDR": "10.0.0.1", "NNODES": 2, "NODE_RANK": 1, "NCCL_SOCKET_IFNAME": "eth0"}, net)
        env = launch_env(m, 2)
        assert env["MAD_MULTI_NODE_RUNNER"].startswith("torchrun --nproc_per_node 2 --nnodes 2 --node_rank 1")
        assert env["MAD_LAUNCHER"] == "torchrun" and env["NCCL_SOCKET_IFNAME"] == "eth0"
        assert "GLOO_SOCKET_IFNAME" not in env  # empty names are not exported
        assert (env["MASTER_ADDR"], env["MASTER_PORT"], env["NNODES"], env["NODE_RANK"]) == ("10.0.0.1", "6006", "2", "1")
        env = launch_env(mn({"RUNNER": "mpirun"}, net), 0)
        assert env["MAD_MULTI_NODE_RUNNER"] == "mpirun -np 1" and env["OMPI_ALLOW_RUN_AS_ROOT"] == "1"

    def test_script_env(self, net):
        m = model(n_gpus=0)
        kw = dict(vendor="NONE", arch="", system_ngpus=0, gpus=(), runtime_ngpus=0, use_devices=False,
                  deployment="local")
        plain = script_env(m, Context({}), **kw)
        assert plain["MAD_MULTI_NODE_RUNNER"] == "torchrun --standalone --nproc_per_node=1"
        assert "MASTER_ADDR" not in plain and "MAD_DATAHOME" not in plain
        multi = mn({"NNODES": 2, "MASTER_ADDR": "h0"}, net)
        env = script_env(m, Context({"docker_env_vars": {"MASTER_PORT": "1234"}}), **kw, multi_node=multi,
                         mirror=Path("/data"))
        assert env["MAD_MULTI_NODE_RUNNER"].startswith("torchrun --nproc_per_node 1 --nnodes 2")
        assert env["MASTER_PORT"] == "1234"  # docker_env_vars still win, as in madengine
        assert env["MAD_DATAHOME"] == "/data"


class TestRanks:
    @pytest.mark.parametrize("prefix, tag", [
        ("[rank1]: ", "rank 1"), ("[default3]:", "local 3"), ("[1,2]<stdout>:", "rank 2"),
        ("rank 4 ", "rank 4"), ("RANK=5 ", "rank 5"), ("local_rank: 6 ", "local 6"), ("epoch 3 ", None),
        ("cranky 1 ", None), ("", None),
    ])
    def test_rank_tag(self, prefix, tag):
        assert rank_tag(prefix) == tag

    def test_rank_lines_first_value_per_rank(self):
        lines = ["[pytest-madengine] rank 9 performance: 1 x", "[rank0]: performance: 10 samples_per_second",
                 "[rank1]: performance: 12.5 samples_per_second", "[rank0]: performance: 99 samples_per_second",
                 "performance: 5 samples_per_second", "[rank2]: performance: NA samples_per_second"]
        got = rank_lines(lines, "m", node=1)
        assert [(v.source, v.value, v.metric) for v in got] == [
            ("node1 rank 0", 10.0, "samples_per_second"), ("node1 rank 1", 12.5, "samples_per_second"),
            ("node1 rank 2", None, "samples_per_second")]

    def test_combine_rules(self):
        def vals(*pairs, metric="samples_per_second"):
            return [RankValue(f"node0 rank {i}", "m", v, str(v), metric) for i, v in enumerate(pairs)]

        assert combine(vals(10.0)) is None  # one rank: the ordinary rules
        c = combine(vals(10.0, 12.0))
        assert c.rows == [("m", 22.0, "samples_per_second")] and c.rule == "sum" and c.sources == 2
        c = combine(vals(10.0, 12.0, metric="tok_per_s_per_gpu"))
        assert c.rows == [("m", 11.0, "tok_per_s_per_gpu")] and c.rule == "mean"
        c = combine(vals(7.0, 7.0, 7.0))  # a global figure every rank printed: not tripled
        assert c.rows == [("m", 7.0, "samples_per_second")] and c.rule == "rank0" and "not summed" in c.warnings[0]
        c = combine(vals(3.0, 5.0, metric="latency_ms"))
        assert c.rows[0][1] == 4.0 and c.rule == "mean"
        with pytest.raises(MetricsError, match="not a number"):
            combine(vals(1.0, None))

    def test_combine_incomplete_and_mixed(self):
        a = [RankValue("r0", "m_a", 1.0, "1", "x_per_s"), RankValue("r0", "m_b", 1.0, "1", "ms"),
             RankValue("r1", "m_a", 2.0, "2", "x_per_s")]
        with pytest.raises(MetricsError, match="'m_b'.*missing from r1"):
            combine(a)
        b = a + [RankValue("r1", "m_b", 3.0, "3", "ms")]
        c = combine(b)
        assert c.rows == [("m_a", 3.0, "x_per_s"), ("m_b", 2.0, "ms")] and c.rule == "m_a=sum; m_b=mean"
        mixed = [RankValue("r0", "m", 1.0, "1", "a_per_s"), RankValue("r1", "m", 2.0, "2", "b_per_s"),
                 RankValue("r1", "m", 4.0, "4", "a_per_s")]
        c = combine(mixed)
        assert c.rows == [("m", 5.0, "a_per_s")] and "different metrics" in c.warnings[0]

    def test_rank_files(self, tmp_path):
        for name, rows in (("res_rank1.csv", "a,2,x_per_s\n"), ("res.rank0.csv", "a,1,x_per_s\n"),
                           ("res_rankX.csv", ""), ("other_rank2.csv", "")):
            (tmp_path / name).write_text("model,performance,metric\n" + rows)
        files = rank_files(tmp_path, "res.csv")
        assert [f.name for f in files] == ["res.rank0.csv", "res_rank1.csv"]
        vals = rank_file_values(files, "m", node=0)
        assert [(v.source, v.name, v.value) for v in vals] == [("node0 res.rank0.csv", "m_a", 1.0),
                                                                ("node0 res_rank1.csv", "m_a", 2.0)]
        assert combine(vals).rows == [("m_a", 3.0, "x_per_s")]
        assert rank_files(tmp_path, "") == []

    def test_rank_value_round_trip(self):
        v = RankValue("node1 rank 3", "m", 1.5, "1.5", "x")
        assert RankValue.from_dict(v.to_dict()) == v
        assert RankValue.from_dict({"value": "bad"}).value is None

    def test_nothing_reported(self, tmp_path):
        assert nothing_reported([], None, "", tmp_path)
        assert not nothing_reported([object()], None, "", tmp_path)
        assert nothing_reported([], None, "r.csv", tmp_path)
        (tmp_path / "r.csv").write_text("")
        assert not nothing_reported([], None, "r.csv", tmp_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bg(threading.Thread):
    def __init__(self, fn, **kw):
        super().__init__(daemon=True)
        self.fn, self.kw, self.result, self.error = fn, kw, None, None

    def run(self):
        try:
            self.result = self.fn(**self.kw)
        except Exception as exc:  # noqa: BLE001
            self.error = exc


class TestRendezvous:
    def test_token(self):
        assert rendezvous.token_for("m", 2) == rendezvous.token_for("m", 2) != rendezvous.token_for("m", 3)

    def test_three_nodes_join_check_and_report(self):
        port = free_port()
        where = f"127.0.0.1:{port}"
        token = rendezvous.token_for("m", 3)
        seen = []
        lead = Bg(rendezvous.lead, port=port, where=where, nnodes=3, token=token, model="m", timeout=10,
                  offer={"mirror": {"token": "abc"}})
        lead.start()
        peers = [Bg(rendezvous.follow, addr="127.0.0.1", port=port, where=where, rank=r, token=token, model="m",
                    timeout=10, check=lambda offer: seen.append(offer) or None) for r in (1, 2)]
        for p in peers:
            p.start()
        for t in (lead, *peers):
            t.join(15)
            assert t.error is None, t.error
        assert seen == [{"mirror": {"token": "abc"}}] * 2
        root = lead.result
        assert sorted(root.peers) == [1, 2]
        assert peers[0].result.report({"status": SUCCESS, "values": [1]}) == ""
        later = Bg(lambda: (time.sleep(0.3), peers[1].result.report({"status": FAILURE}))[1])
        later.start()
        got, missing = root.collect(timeout=5)
        later.join(5)
        assert got == {1: {"status": SUCCESS, "values": [1]}, 2: {"status": FAILURE}} and missing == {}
        assert later.result == ""

    def test_timeout_names_missing_ranks(self):
        port = free_port()
        start = time.monotonic()
        with pytest.raises(rendezvous.RendezvousFailed) as info:
            rendezvous.lead(port=port, where=f"h0:{port}", nnodes=3, token="t", model="m", timeout=0.5)
        assert time.monotonic() - start < 3
        assert str(info.value) == f"rendezvous timed out after 0.5 s at h0:{port}; ranks that did not join: [1, 2]"
        with pytest.raises(rendezvous.RendezvousFailed, match=r"ranks that did not join: \[0\] \(last: .*refused"):
            rendezvous.follow(addr="127.0.0.1", port=port, where=f"h0:{port}", rank=1, token="t", model="m",
                              timeout=0.5)

    def test_other_model_is_retried_then_times_out(self):
        port = free_port()
        lead = Bg(rendezvous.lead, port=port, where="x", nnodes=2, token="A", model="a", timeout=1.5)
        lead.start()
        time.sleep(0.2)
        with pytest.raises(rendezvous.RendezvousFailed, match="node 0 is at model 'a'"):
            rendezvous.follow(addr="127.0.0.1", port=port, where="x", rank=1, token="B", model="b", timeout=1)
        lead.join(5)
        assert "ranks that did not join: [1]" in str(lead.error)

    def test_duplicate_rank_is_turned_away(self):
        port = free_port()
        # Generous times: on a loaded 2-core CI machine the first follower may take a while to join.
        lead = Bg(rendezvous.lead, port=port, where="x", nnodes=3, token="T", model="m", timeout=3)
        lead.start()
        first = Bg(rendezvous.follow, addr="127.0.0.1", port=port, where="x", rank=1, token="T", model="m",
                   timeout=10)
        first.start()
        time.sleep(1.0)
        with pytest.raises(rendezvous.RendezvousFailed, match="NODE_RANK 1 already joined"):
            rendezvous.follow(addr="127.0.0.1", port=port, where="x", rank=1, token="T", model="m", timeout=10)
        first.join(15)
        lead.join(15)
        assert "ranks that did not join: [2]" in str(lead.error)
        assert "aborted by node 0: rendezvous timed out" in str(first.error)  # told at once, not after 5 s

    def test_a_node_that_comes_back_replaces_its_old_connection(self):
        port = free_port()
        lead = Bg(rendezvous.lead, port=port, where="x", nnodes=3, token="T", model="m", timeout=5)
        lead.start()
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port)) as gone:  # joins as rank 1, then dies
            gone.sendall(b'{"hello": "T", "rank": 1, "model": "m"}\n')
            time.sleep(0.3)
        peers = [Bg(rendezvous.follow, addr="127.0.0.1", port=port, where="x", rank=r, token="T", model="m",
                    timeout=5) for r in (1, 2)]
        for t in peers:
            t.start()
        for t in (*peers, lead):
            t.join(10)
        assert [t.error for t in (lead, *peers)] == [None, None, None]
        assert sorted(lead.result.peers) == [1, 2]

    def test_failed_check_aborts_everyone(self):
        port = free_port()
        lead = Bg(rendezvous.lead, port=port, where="x", nnodes=2, token="T", model="m", timeout=5)
        lead.start()
        with pytest.raises(rendezvous.RendezvousFailed, match="^the mirror is not shared$"):
            rendezvous.follow(addr="127.0.0.1", port=port, where="x", rank=1, token="T", model="m", timeout=5,
                              check=lambda offer: "the mirror is not shared")
        lead.join(10)
        assert str(lead.error) == "rendezvous at x aborted: node 1: the mirror is not shared"

    def test_collect_reports_a_peer_that_never_reports(self):
        port = free_port()
        lead = Bg(rendezvous.lead, port=port, where="x", nnodes=2, token="T", model="m", timeout=5)
        lead.start()
        peer = rendezvous.follow(addr="127.0.0.1", port=port, where="x", rank=1, token="T", model="m", timeout=5)
        lead.join(5)
        got, missing = lead.result.collect(timeout=0.3)
        assert got == {} and "did not report within 0.3 s" in missing[1]
        assert peer.report({"status": SUCCESS}) == ""  # node 0 stopped listening: sent, never read
        peer.close()


class TestMirror:
    def test_check_mirror(self, tmp_path):
        assert check_mirror(None) is None
        assert check_mirror(tmp_path) == tmp_path
        with pytest.raises(UsageError, match="no such folder; it is not created"):
            check_mirror(tmp_path / "nfs" / "data")
        assert not (tmp_path / "nfs").exists()
        (tmp_path / "f").write_text("")
        with pytest.raises(UsageError, match="not a folder"):
            check_mirror(tmp_path / "f")
        with pytest.raises(UsageError, match="absolute"):
            check_mirror(Path("relative/data"))

    def test_marker_must_be_visible(self, tmp_path, net):
        a, b = tmp_path / "a", tmp_path / "b"
        a.mkdir(), b.mkdir()
        root = NodeRun(mn({"NNODES": 2}, net), "m", mirror=a)
        offer = root._write_marker()
        assert (a / offer["file"]).read_text().strip() == offer["token"]
        shared = NodeRun(mn({"NNODES": 2, "NODE_RANK": 1}, net), "m", mirror=a)
        assert shared._check_offer({"mirror": offer}) is None
        other = NodeRun(mn({"NNODES": 2, "NODE_RANK": 1}, net), "m", mirror=b)
        assert f"{b} is not shared between the nodes" in other._check_offer({"mirror": offer})
        none = NodeRun(mn({"NNODES": 2, "NODE_RANK": 1}, net), "m", mirror=None)
        assert "give it on every node" in none._check_offer({"mirror": offer})
        assert "node 0 does not" in other._check_offer({})
        root._remove_marker()
        assert list(a.iterdir()) == []


class TestVerdicts:
    def result(self, status=SUCCESS, value=5.0):
        rows = [Row("m", value, "samples_per_second", SUCCESS)] if status == SUCCESS else []
        return ModelResult(model="m", status=status, rows=rows,
                           reason="" if status == SUCCESS else "no performance line ('performance: <value> <metric>') in the output")

    def test_peer_passes_without_performance(self, tmp_path, net):
        node = NodeRun(mn({"NNODES": 2, "NODE_RANK": 1}, net), "m")
        log = tmp_path / "log"
        log.write_text("hello\n")
        r = self.result(FAILURE)
        node.finish(r, outcome_ok=True, log_path=log, run_dir=tmp_path, multiple_results="", nothing_reported=True)
        assert r.status == SUCCESS and r.rows == [Row("m", None, "", SUCCESS)]
        assert r.properties["node_rank"] == "1" and r.properties["performance_reported_by"] == "node_rank 0"

    def test_peer_value_is_not_its_row(self, tmp_path, net):
        node = NodeRun(mn({"NNODES": 2, "NODE_RANK": 1}, net), "m")
        log = tmp_path / "log"
        log.write_text("performance: 5 samples_per_second\n")
        r = self.result()
        node.finish(r, outcome_ok=True, log_path=log, run_dir=tmp_path, multiple_results="", nothing_reported=False)
        assert r.rows[0].performance is None and r.properties["node_performance"] == "m=5 samples_per_second"

    def test_peer_fails_on_its_own_output(self, tmp_path, net):
        node = NodeRun(mn({"NNODES": 2, "NODE_RANK": 1}, net), "m")
        log = tmp_path / "log"
        log.write_text("[rank1]: performance: NA samples_per_second\n")
        r = self.result(FAILURE)
        r.reason = "performance is not a number: 'NA' samples_per_second"
        node.finish(r, outcome_ok=True, log_path=log, run_dir=tmp_path, multiple_results="", nothing_reported=False)
        assert r.status == FAILURE and "not a number" in r.reason
        r = self.result(FAILURE)
        r.reason = "exit code 3"
        node.finish(r, outcome_ok=False, log_path=log, run_dir=tmp_path, multiple_results="", nothing_reported=True)
        assert r.status == FAILURE and r.reason == "exit code 3"

    def test_root_combines_its_ranks(self, tmp_path, net):
        node = NodeRun(mn({"NNODES": 1}, net), "m")
        log = tmp_path / "log"
        log.write_text("[rank0]: performance: 10 samples_per_second\n[rank1]: performance: 11 samples_per_second\n")
        r = self.result(value=10.0)
        r.warnings = ["2 different performance values printed; using the first (madengine's rule): ..."]
        node.finish(r, outcome_ok=True, log_path=log, run_dir=tmp_path, multiple_results="", nothing_reported=False)
        assert r.status == SUCCESS and r.rows == [Row("m", 21.0, "samples_per_second", SUCCESS)]
        assert r.properties["aggregation"] == "sum" and r.properties["aggregated_ranks"] == "2"
        assert r.warnings == []

    def test_root_per_rank_files(self, tmp_path, net):
        node = NodeRun(mn({"NNODES": 1}, net), "m")
        log = tmp_path / "log"
        log.write_text("")
        for rank in (0, 1):
            (tmp_path / f"res_rank{rank}.csv").write_text(f"model,performance,metric\nbert,{rank + 1},ms\n")
        r = ModelResult(model="m", status=FAILURE, reason="multiple_results file 'res.csv' was not written")
        node.finish(r, outcome_ok=True, log_path=log, run_dir=tmp_path, multiple_results="res.csv",
                    nothing_reported=True)
        assert r.status == SUCCESS and r.rows == [Row("m_bert", 1.5, "ms", SUCCESS)]
        assert r.properties["aggregation"] == "mean"
