"""``distributed.launcher: slurm_multi`` (alias ``slurm-multi``): the model's own
``.slurm``/``.sbatch`` script is the job; it starts its own nodes and containers (``srun``),
so it runs once, and we set no runner. ``xP``/``yD`` come from
``distributed.sglang_disagg.{prefill_nodes,decode_nodes}`` when that section is given (a
missing one is 1, as in madengine 2.x), for MAD's disaggregated-serving scripts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_madengine.multinode.launchers import base
from pytest_madengine.multinode.launchers.base import Launch, Topology

NAME = "slurm_multi"


def validate(settings: Mapping[str, Any], topo: Topology) -> None:
    base.check(settings, topo)


def launch(settings: Mapping[str, Any], topo: Topology, model_name: str) -> Launch:
    validate(settings, topo)
    env = base.env(NAME, "", topo, settings)
    disagg = base.section(settings, "sglang_disagg")
    if disagg:
        for var, name in (("xP", "prefill_nodes"), ("yD", "decode_nodes")):
            value = base.int_setting(disagg, name, lo=1, where=base.key(f"sglang_disagg.{name}"))
            env[var] = str(value if value is not None else 1)
    note = "slurm_multi: the model's own script is the job (it starts its nodes itself); no runner"
    return Launch(runner="", env=env, notes=(note,))
