"""What every launcher shares: the node's place in the run (``Topology``), what a launcher
produces (``Launch``), the launcher names, and validation of madengine 2.x's ``distributed``
context key.

Pure: no I/O, no environment reads. A launcher is a function of the merged ``distributed``
dict, this node's topology and the model name; the same function serves every backend
(local, Docker, SLURM), which only decide where the script runs.

``distributed`` keys read (madengine 2.x): ``launcher``, ``nnodes``, ``nproc_per_node``,
``port`` (madengine's SLURM spelling) / ``master_port`` (its documented spelling; we accept
both), ``backend`` (exported as ``DISTRIBUTED_BACKEND``), ``sglang_disagg.{prefill_nodes,
decode_nodes}``, ``primus.{config_path,cli_extra,backend}``. Other keys are left alone.
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pytest_madengine.errors import UsageError

DEFAULT_LAUNCHER = "torchrun"  # madengine 2.x, local and SLURM
DEFAULT_PORT = 29500  # madengine 2.x (SLURM preset, K8s launcher.master_port)
DEFAULT_MASTER_ADDR = "localhost"

# madengine 2.x's launchers (deployment/common.py VALID_LAUNCHERS, plus ``megatron``, which
# its local runner and K8s accept) and madengine 1.x's ``mpirun`` runner.
CANONICAL = ("torchrun", "deepspeed", "megatron", "megatron-lm", "torchtitan", "primus", "vllm",
             "sglang", "sglang-disagg", "slurm_multi", "mpirun")
ALIASES = {"sglang_disagg": "sglang-disagg", "slurm-multi": "slurm_multi"}

# A host or address as it may appear unquoted in ``$MAD_MULTI_NODE_RUNNER``: scripts expand
# that variable unquoted: words are split, quotes never removed, and brackets would glob.
# Names, IPv4 and bare IPv6 (with an optional %zone) only.
_HOST = re.compile(r"^[A-Za-z0-9:][A-Za-z0-9_.:%-]*$")


class LauncherError(UsageError):
    """A ``distributed`` setting (or this node's topology) a launcher cannot work with.
    The message names the key, e.g. ``distributed.nnodes``."""


@dataclass(frozen=True)
class Topology:
    """This node's place in the run. The numbers are authoritative: a launcher reads N, P,
    R, the master address and port from here (``topology()`` builds one from the settings)."""

    nnodes: int
    nproc_per_node: int
    node_rank: int
    master_addr: str
    master_port: int
    hosts: tuple[str, ...] = ()  # every node's host name or address, by node rank; () unknown

    @property
    def multi_node(self) -> bool:
        return self.nnodes > 1

    @property
    def host(self) -> str:
        """This node's host name or address, "" when the hosts are not known."""
        return self.hosts[self.node_rank] if self.hosts else ""

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


@dataclass(frozen=True)
class Launch:
    """What a launcher gives one node's script.

    ``runner``: madengine's ``MAD_MULTI_NODE_RUNNER`` ("" when the launcher sets none; the
    script expands it unquoted, so it never holds quotes). ``env``: every variable the script
    gets from the launcher, ``MAD_MULTI_NODE_RUNNER`` and ``MAD_LAUNCHER`` always included.
    ``files``: files to write into the run folder (the script's working directory) before the
    script starts, relative name -> text. ``notes``: for the plan, e.g. where we differ from
    madengine. ``setup``: commands (argv lists) to run on this node, in order, before the
    script, in the same place as the script (e.g. joining a Ray cluster)."""

    runner: str
    env: Mapping[str, str] = field(hash=False)
    files: Mapping[str, str] = field(default_factory=dict, hash=False)
    notes: tuple[str, ...] = ()
    setup: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        # read-only views: a Launch is shared by the plan, the executor and the report
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        object.__setattr__(self, "files", MappingProxyType(dict(self.files)))


# ------------------------------------------------------------------------------- names


def key(name: str) -> str:
    """A ``distributed`` key as messages name it."""
    return f"distributed.{name}"


def canonical(name: Any) -> str:
    """The canonical launcher name for ``name`` (case and surrounding blanks ignored, aliases
    resolved). Unknown names raise LauncherError with the closest known names."""
    if not isinstance(name, str):
        raise LauncherError(f"{key('launcher')} must be a string, got {type(name).__name__} ({name!r}); "
                            f"known launchers: {', '.join(CANONICAL)}")
    norm = name.strip().lower()
    norm = ALIASES.get(norm, norm)
    if norm in CANONICAL:
        return norm
    close = difflib.get_close_matches(norm, [*CANONICAL, *ALIASES], n=3, cutoff=0.5)
    close = list(dict.fromkeys(ALIASES.get(c, c) for c in close))
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise LauncherError(f"{key('launcher')}: unknown launcher {name!r}{hint} "
                        f"(known: {', '.join(CANONICAL)}; aliases: "
                        f"{', '.join(f'{a} -> {c}' for a, c in ALIASES.items())})")


def launcher_of(settings: Mapping[str, Any]) -> str:
    """The canonical launcher the settings ask for; torchrun when none (madengine 2.x)."""
    if not isinstance(settings, Mapping):
        raise LauncherError(f"context key 'distributed' must be a dict, got {type(settings).__name__}")
    raw = settings.get("launcher")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return DEFAULT_LAUNCHER
    return canonical(raw)


# ----------------------------------------------------------------------------- values


def as_int(where: str, value: Any, *, lo: int, hi: int | None = None) -> int:
    """An integer (or its decimal text, or an integral float) within lo..hi."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        number = int(value)
    if number is None:
        raise LauncherError(f"{where} must be an integer, got {value!r}")
    if number < lo or (hi is not None and number > hi):
        span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise LauncherError(f"{where} is out of range: {number} (must be {span})")
    return number


def int_setting(settings: Mapping[str, Any], name: str, *, lo: int, hi: int | None = None,
                where: str | None = None) -> int | None:
    """``settings[name]`` as an integer, None when absent or null."""
    value = settings.get(name)
    return None if value is None else as_int(where or key(name), value, lo=lo, hi=hi)


def str_setting(settings: Mapping[str, Any], name: str, *, where: str | None = None) -> str:
    """``settings[name]`` as a stripped string, "" when absent or null."""
    value = settings.get(name)
    if value is None:
        return ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise LauncherError(f"{where or key(name)} must be a string, got {type(value).__name__} ({value!r})")
    return str(value).strip()


def section(settings: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """A nested dict (``sglang_disagg``, ``primus``), {} when absent or null."""
    value = settings.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise LauncherError(f"{key(name)} must be a dict, got {type(value).__name__} ({value!r})")
    return value


def port_setting(settings: Mapping[str, Any]) -> int | None:
    """``port`` (madengine's SLURM reads this) or ``master_port`` (its docs say this); both
    given must agree."""
    port = int_setting(settings, "port", lo=1, hi=65535)
    master_port = int_setting(settings, "master_port", lo=1, hi=65535)
    if port is not None and master_port is not None and port != master_port:
        raise LauncherError(f"{key('port')} ({port}) and {key('master_port')} ({master_port}) disagree; "
                            "give one of them")
    return port if port is not None else master_port


def check_settings(settings: Mapping[str, Any]) -> None:
    """The form of every ``distributed`` key launchers read (ranges, types), each error
    naming its key."""
    if not isinstance(settings, Mapping):
        raise LauncherError(f"context key 'distributed' must be a dict, got {type(settings).__name__}")
    launcher_of(settings)
    int_setting(settings, "nnodes", lo=1)
    int_setting(settings, "nproc_per_node", lo=1)
    port_setting(settings)
    str_setting(settings, "backend")
    disagg = section(settings, "sglang_disagg")
    for name in ("prefill_nodes", "decode_nodes"):
        int_setting(disagg, name, lo=1, where=key(f"sglang_disagg.{name}"))
    primus = section(settings, "primus")
    for name in ("config_path", "cli_extra", "backend"):
        str_setting(primus, name, where=key(f"primus.{name}"))


def check_host(where: str, value: str) -> None:
    if not value or not _HOST.match(value):
        raise LauncherError(f"{where} must be a host name or address, got {value!r}")


def check_topology(topo: Topology) -> None:
    """The topology's numbers, named by the ``distributed`` key they come from."""
    as_int(key("nnodes"), topo.nnodes, lo=1)
    as_int(key("nproc_per_node"), topo.nproc_per_node, lo=1)
    as_int(key("port"), topo.master_port, lo=1, hi=65535)
    rank = as_int("node_rank", topo.node_rank, lo=0)
    if rank >= topo.nnodes:
        raise LauncherError(f"node_rank {rank} is out of range for {key('nnodes')} {topo.nnodes} "
                            f"(ranks 0..{topo.nnodes - 1})")
    check_host("master_addr", topo.master_addr)
    if topo.hosts:
        if len(topo.hosts) != topo.nnodes:
            raise LauncherError(f"{key('nnodes')} is {topo.nnodes} but {len(topo.hosts)} hosts are known "
                                f"({', '.join(topo.hosts)})")
        for i, host in enumerate(topo.hosts):
            check_host(f"host of node {i}", host)


def check(settings: Mapping[str, Any], topo: Topology) -> None:
    """What every launcher validates: the settings' form and the topology."""
    check_settings(settings)
    check_topology(topo)


def topology(settings: Mapping[str, Any], *, gpus: int, node_rank: int = 0,
             master_addr: str = DEFAULT_MASTER_ADDR, hosts: Sequence[str] = ()) -> Topology:
    """This node's topology from the settings: N = ``nnodes`` (1), P = ``nproc_per_node``
    (else the GPUs given, 1 without GPUs), PORT = ``port``/``master_port`` (29500). Validated."""
    check_settings(settings)
    topo = Topology(
        nnodes=int_setting(settings, "nnodes", lo=1) or 1,
        nproc_per_node=int_setting(settings, "nproc_per_node", lo=1) or max(1, gpus),
        node_rank=node_rank,
        master_addr=master_addr,
        master_port=port_setting(settings) or DEFAULT_PORT,
        hosts=tuple(hosts),
    )
    check_topology(topo)
    return topo


# -------------------------------------------------------------------------------- env


def join(argv: Sequence[str]) -> str:
    """A runner string. Hosts are checked to need no quoting (the script expands the runner
    unquoted), so this is a plain space join; shlex.join keeps it safe if one ever did."""
    return shlex.join(argv)


def env(name: str, runner: str, topo: Topology, settings: Mapping[str, Any]) -> dict[str, str]:
    """The variables every launcher sets: the runner, the launcher name, the node's place
    (multi-node only) and ``DISTRIBUTED_BACKEND`` when ``distributed.backend`` is given."""
    out = {"MAD_MULTI_NODE_RUNNER": runner, "MAD_LAUNCHER": name}
    if topo.multi_node:
        out.update({
            "NNODES": str(topo.nnodes),
            "NPROC_PER_NODE": str(topo.nproc_per_node),
            "NODE_RANK": str(topo.node_rank),
            "MASTER_ADDR": topo.master_addr,
            "MASTER_PORT": str(topo.master_port),
        })
    backend = str_setting(settings, "backend")
    if backend:
        out["DISTRIBUTED_BACKEND"] = backend
    return out


def torchrun_runner(topo: Topology) -> str:
    """madengine 2.x's torchrun runner: standalone on one node, the ``=`` form otherwise."""
    if not topo.multi_node:
        return join(["torchrun", "--standalone", f"--nproc_per_node={topo.nproc_per_node}"])
    return join(["torchrun", f"--nnodes={topo.nnodes}", f"--nproc_per_node={topo.nproc_per_node}",
                 f"--node_rank={topo.node_rank}", f"--master_addr={topo.master_addr}",
                 f"--master_port={topo.master_port}"])
