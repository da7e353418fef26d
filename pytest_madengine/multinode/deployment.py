"""madengine 2.x's ``distributed`` key on this plugin's own backends (local, Docker): the
model card's and the context's settings merged, this node's topology, and the launcher's
runner and environment (``launchers/``, one pure function each).

Where the settings come from: the card's ``distributed`` then the context's, merged key by
key (nested dicts too), the command line winning. ``nproc_per_node`` defaults to the GPUs
the model was given (1 without). On several nodes, this node's place (NODE_RANK, MASTER_ADDR,
NNODES, MASTER_PORT) comes from ``multi_node_args``, which then only says where the node
stands: when it also names a RUNNER, ``distributed.launcher`` wins, with a warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_madengine.context import merge
from pytest_madengine.multinode.launchers import registry
from pytest_madengine.multinode.launchers.base import Launch, LauncherError
from pytest_madengine.multinode.settings import MultiNode


def distributed_settings(card: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """The model card's ``distributed`` under the context's (the context wins, key by key)."""
    own = card.get("distributed") or {}
    given = context.get("distributed") or {}
    if not isinstance(own, Mapping):
        raise LauncherError(f"model card field 'distributed' must be an object, got {type(own).__name__}")
    if not isinstance(given, Mapping):
        raise LauncherError(f"context key 'distributed' must be a dict, got {type(given).__name__}")
    return merge(dict(own), dict(given))


def launch_for(card: Mapping[str, Any], context: Mapping[str, Any], mn: MultiNode, gpus: int,
               model_name: str, *, job_nodes: int | None = None) -> Launch | None:
    """The launcher's runner and environment for this node; None without ``distributed``
    (madengine 1.x ``multi_node_args`` and the single-node default then apply as before).
    ``job_nodes``: the nodes of the job a scheduler runs the model in (``slurm.nodes``), the
    default ``nnodes`` when ``multi_node_args`` does not place this node."""
    settings = distributed_settings(card, context)
    if not settings:
        return None
    if job_nodes is not None and not mn.configured:
        settings.setdefault("nnodes", job_nodes)
    if mn.configured:
        settings.setdefault("nnodes", mn.nnodes)
        if "port" not in settings and "master_port" not in settings:
            settings["port"] = mn.master_port
        if mn.nproc_per_node is not None:
            settings.setdefault("nproc_per_node", mn.nproc_per_node)
        topo = registry.topology(settings, gpus=gpus, node_rank=mn.node_rank, master_addr=mn.master_addr,
                                 hosts=tuple(h.name for h in mn.hosts))
    else:
        topo = registry.topology(settings, gpus=gpus)
    return registry.launch(settings, topo, model_name)


def both_given_warning(context: Mapping[str, Any]) -> str | None:
    """madengine 2.x takes ``distributed`` over 1.x's ``multi_node_args`` RUNNER; say so."""
    mna = context.get("multi_node_args") or {}
    dist = context.get("distributed") or {}
    if isinstance(mna, Mapping) and isinstance(dist, Mapping) and dist.get("launcher") and \
            any(str(k).upper() == "RUNNER" for k in mna):
        return ("context keys 'distributed' and 'multi_node_args' both name a launcher: distributed.launcher "
                f"({dist.get('launcher')}) wins, as in madengine 2.x; multi_node_args gives this node's place only")
    return None
