"""``distributed.launcher: primus``: no runner (the model script calls Primus's own
``run_pretrain.sh``); ``PRIMUS_CONFIG_PATH`` (``distributed.primus.config_path``, default
``exp_pretrain.yaml``), ``PRIMUS_CLI_EXTRA`` (``primus.cli_extra``, when given), ``BACKEND``
(``primus.backend``, else from a model named ``primus_pretrain/<backend>_...``) and
``GPUS_PER_NODE=P`` (Primus's scripts read it; madengine's SLURM job exports it for every
launcher). madengine 2.x's SLURM values; locally madengine sets only an empty runner.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_madengine.multinode.launchers import base
from pytest_madengine.multinode.launchers.base import Launch, Topology

NAME = "primus"
DEFAULT_CONFIG_PATH = "exp_pretrain.yaml"
MODEL_PREFIX = "primus_pretrain/"
# Primus spells the JAX backend MaxText; the others are lower case (madengine's table).
BACKENDS = {"maxtext": "MaxText", "torchtitan": "torchtitan", "megatron": "megatron",
            "megatron_bridge": "megatron_bridge", "moe_package": "moe_package"}


def validate(settings: Mapping[str, Any], topo: Topology) -> None:
    base.check(settings, topo)


def backend_from_model(model_name: str) -> str:
    """``primus_pretrain/torchtitan_MI300X_qwen3`` -> ``torchtitan``; "" when not of that form.
    ``megatron_bridge_...``/``moe_package_...`` are matched whole before the first ``_``
    token (madengine splits at the first ``_`` only and so never finds them)."""
    name = model_name.strip()
    if not name.startswith(MODEL_PREFIX):
        return ""
    rest = name[len(MODEL_PREFIX):].strip().lower()
    for token in sorted(BACKENDS, key=len, reverse=True):
        if rest == token or rest.startswith(token + "_"):
            return BACKENDS[token]
    return ""


def launch(settings: Mapping[str, Any], topo: Topology, model_name: str) -> Launch:
    validate(settings, topo)
    primus = base.section(settings, "primus")
    env = base.env(NAME, "", topo, settings)
    env["PRIMUS_CONFIG_PATH"] = base.str_setting(primus, "config_path") or DEFAULT_CONFIG_PATH
    cli_extra = base.str_setting(primus, "cli_extra")
    if cli_extra:
        env["PRIMUS_CLI_EXTRA"] = cli_extra
    backend = base.str_setting(primus, "backend") or backend_from_model(model_name)
    if backend:
        env["BACKEND"] = backend
    env["GPUS_PER_NODE"] = str(topo.nproc_per_node)
    return Launch(runner="", env=env)
