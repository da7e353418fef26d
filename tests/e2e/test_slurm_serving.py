"""The serving launchers on SLURM, for real: ``sglang`` on two nodes and ``sglang-disagg`` on
three, deployed with the `slurm` key on the cluster of .ci/setup-slurm.sh. Each node's task
gets the launcher's per-node variables (its own ``SGLANG_NODE_RANK``, its role), and the nodes
meet in one gloo process group at the address the launcher gives them, as SGLang's
``--dist-init-addr`` does: a wrong rank, role or address on any node and they never meet.
The same stand-ins run across network namespaces in test_serving_launchers.py."""

from __future__ import annotations

import re

import pytest

from .conftest import ModelRepo
from .test_serving_launchers import DISAGG_RUN, MEET, SGLANG_RUN
from .test_slurm import cluster, props
from .test_slurm_deploy import argv, needs_torch, slurm

pytestmark = [pytest.mark.slurm, pytest.mark.multinode, pytest.mark.usefixtures("cluster")]
__all__ = ["cluster"]


def serving_model(repo: ModelRepo, name: str, run: str, nodes: int, distributed: dict[str, object]) -> None:
    repo.script(f"scripts/{name}/meet.py", MEET)
    repo.model(name, run, slurm={"nodes": nodes}, distributed=distributed)


def test_sglang_nodes_meet_at_the_init_address_on_two_slurm_nodes(pytester: pytest.Pytester) -> None:
    needs_torch()
    serving_model(ModelRepo(pytester.path), "madslurm_sglang", SGLANG_RUN, 2, {"launcher": "sglang"})
    res = pytester.runpytest_subprocess(*argv(tags="madslurm_sglang", context=slurm()), timeout=240)
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["*madslurm_sglang*SUCCESS*2*nodes_met*"])
    log = (pytester.path / "mad_logs" / "madslurm_sglang.log").read_text()
    heads = re.findall(r"launcher=sglang tp=1 nnodes=2 node_rank=(\d) init=(\S+)", log)
    assert sorted(rank for rank, _ in heads) == ["0", "1"], log
    assert len({init for _, init in heads}) == 1, log  # one address for every node
    assert log.count("sees roles sglang,sglang") == 2, log
    p = props(pytester.path)["madslurm_sglang"]
    assert p["nnodes"] == "2" and p["launcher"] == "sglang"


def test_sglang_disagg_roles_on_three_slurm_nodes(pytester: pytest.Pytester) -> None:
    needs_torch()
    serving_model(ModelRepo(pytester.path), "madslurm_disagg", DISAGG_RUN, 3, {"launcher": "sglang-disagg"})
    res = pytester.runpytest_subprocess(*argv(tags="madslurm_disagg", context=slurm()), timeout=240)
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["*madslurm_disagg*SUCCESS*3*nodes_met*"])
    log = (pytester.path / "mad_logs" / "madslurm_disagg.log").read_text()
    # 3 nodes: one proxy, xP = max(1, (3-1)*2//5) = 1 prefill, yD = 1 decode
    assert sorted(re.findall(r"role=(\w+) prefill=1 decode=1 total=3", log)) == ["decode", "prefill", "proxy"], log
    assert log.count("sees roles proxy,prefill,decode") == 3, log
