"""Launcher name -> module, and the one entry point: ``launch(settings, topo, model_name)``.

Every launcher module exposes ``validate(settings, topo)`` (raises LauncherError naming the
key) and ``launch(settings, topo, model_name) -> Launch``; all are pure. The result is the
same whatever backend runs the script; every variable in ``Launch.env`` goes to the script.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from pytest_madengine.multinode.launchers import (
    deepspeed,
    megatron,
    mpirun,
    primus,
    sglang,
    sglang_disagg,
    slurm_multi,
    torchrun,
    torchtitan,
    vllm,
)
from pytest_madengine.multinode.launchers.base import (
    ALIASES,
    CANONICAL,
    Launch,
    LauncherError,
    Topology,
    canonical,
    launcher_of,
    topology,
)

__all__ = ["ALIASES", "CANONICAL", "LAUNCHERS", "Launch", "LauncherError", "LauncherModule", "Topology",
           "canonical", "launch", "launcher_of", "module", "topology", "validate"]


class LauncherModule(Protocol):
    def validate(self, settings: Mapping[str, Any], topo: Topology) -> None: ...

    def launch(self, settings: Mapping[str, Any], topo: Topology, model_name: str) -> Launch: ...


LAUNCHERS: Mapping[str, LauncherModule] = {
    "torchrun": torchrun,
    "deepspeed": deepspeed,
    "megatron": megatron,
    "megatron-lm": megatron,
    "torchtitan": torchtitan,
    "primus": primus,
    "vllm": vllm,
    "sglang": sglang,
    "sglang-disagg": sglang_disagg,
    "slurm_multi": slurm_multi,
    "mpirun": mpirun,
}
assert tuple(LAUNCHERS) == CANONICAL and all(c in LAUNCHERS for c in ALIASES.values())


def module(settings: Mapping[str, Any]) -> LauncherModule:
    """The module of the launcher the settings name (torchrun when none)."""
    return LAUNCHERS[launcher_of(settings)]


def validate(settings: Mapping[str, Any], topo: Topology) -> None:
    """Everything ``launch`` checks, without building anything."""
    module(settings).validate(settings, topo)


def launch(settings: Mapping[str, Any], topo: Topology, model_name: str) -> Launch:
    """What this node's script gets from the ``distributed`` settings: validated first
    (LauncherError naming the key), then the named launcher's ``launch``."""
    mod = module(settings)
    mod.validate(settings, topo)
    return mod.launch(settings, topo, model_name)
