"""``distributed.launcher: sglang-disagg`` (alias ``sglang_disagg``): SGLang with prefill and
decode on separate nodes. N >= 3: node 0 is the proxy (load balancer), nodes 1..xP prefill,
the other yD nodes decode. No runner.

Split: ``distributed.sglang_disagg.prefill_nodes`` (xP) and ``decode_nodes`` (yD); both given
must satisfy xP + yD + 1 = N; one given, the other is the rest; none, xP = max(1, (N-1)*2//5)
and yD the rest (madengine 2.x's default split).

Env (madengine 2.x's SLURM values): ``SGLANG_DISAGG_MODE=enabled``,
``SGLANG_DISAGG_PREFILL_NODES``, ``SGLANG_DISAGG_DECODE_NODES``, ``SGLANG_DISAGG_TOTAL_NODES``,
``SGLANG_TP_SIZE=P``, ``SGLANG_NODE_RANK=R``, ``SGLANG_NODE_IPS`` (the hosts, comma-separated,
when known; madengine resolves SLURM's node names to IPs), and our addition
``SGLANG_DISAGG_ROLE`` = ``proxy`` | ``prefill`` | ``decode``, so each node's script need not
recompute the split.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_madengine.multinode.launchers import base
from pytest_madengine.multinode.launchers.base import Launch, LauncherError, Topology

NAME = "sglang-disagg"
MIN_NODES = 3
PREFILL = base.key("sglang_disagg.prefill_nodes")
DECODE = base.key("sglang_disagg.decode_nodes")


def split(settings: Mapping[str, Any], nnodes: int) -> tuple[int, int]:
    """(prefill nodes xP, decode nodes yD) for N nodes, validated (errors name the keys)."""
    if nnodes < MIN_NODES:
        raise LauncherError(f"{base.key('nnodes')} is {nnodes}: {base.key('launcher')} {NAME} needs at least "
                            f"{MIN_NODES} nodes (1 proxy + 1 prefill + 1 decode)")
    disagg = base.section(settings, "sglang_disagg")
    prefill = base.int_setting(disagg, "prefill_nodes", lo=1, where=PREFILL)
    decode = base.int_setting(disagg, "decode_nodes", lo=1, where=DECODE)
    workers = nnodes - 1
    if prefill is not None and decode is not None:
        if prefill + decode != workers:
            raise LauncherError(f"{PREFILL} ({prefill}) + {DECODE} ({decode}) + 1 proxy must equal "
                                f"{base.key('nnodes')} ({nnodes}), not {prefill + decode + 1}")
        return prefill, decode
    if prefill is not None or decode is not None:
        given, value = (PREFILL, prefill) if prefill is not None else (DECODE, decode)
        assert value is not None
        if value >= workers:
            raise LauncherError(f"{given} ({value}) leaves no node for the other role: {base.key('nnodes')} "
                                f"({nnodes}) = 1 proxy + {PREFILL} + {DECODE}")
        return (value, workers - value) if prefill is not None else (workers - value, value)
    prefill = max(1, workers * 2 // 5)
    return prefill, workers - prefill


def role(node_rank: int, prefill: int) -> str:
    return "proxy" if node_rank == 0 else "prefill" if node_rank <= prefill else "decode"


def validate(settings: Mapping[str, Any], topo: Topology) -> None:
    base.check(settings, topo)
    split(settings, topo.nnodes)


def launch(settings: Mapping[str, Any], topo: Topology, model_name: str) -> Launch:
    validate(settings, topo)
    prefill, decode = split(settings, topo.nnodes)
    env = base.env(NAME, "", topo, settings)
    env.update({
        "SGLANG_DISAGG_MODE": "enabled",
        "SGLANG_DISAGG_PREFILL_NODES": str(prefill),
        "SGLANG_DISAGG_DECODE_NODES": str(decode),
        "SGLANG_DISAGG_TOTAL_NODES": str(topo.nnodes),
        "SGLANG_TP_SIZE": str(topo.nproc_per_node),
        "SGLANG_NODE_RANK": str(topo.node_rank),
        "SGLANG_DISAGG_ROLE": role(topo.node_rank, prefill),
    })
    if topo.hosts:
        env["SGLANG_NODE_IPS"] = ",".join(topo.hosts)
    notes = [f"sglang-disagg: 1 proxy (node 0), {prefill} prefill (nodes 1..{prefill}), {decode} decode "
             f"(nodes {prefill + 1}..{topo.nnodes - 1}); this node: {env['SGLANG_DISAGG_ROLE']}",
             "sglang-disagg: SGLANG_DISAGG_ROLE is our addition (madengine leaves the role to the script)"]
    if not topo.hosts:
        notes.append("sglang-disagg: hosts not known, SGLANG_NODE_IPS not set")
    return Launch(runner="", env=env, notes=tuple(notes))
