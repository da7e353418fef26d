"""madengine 1.x's ``multi_node_args`` context key, parsed once into a frozen ``MultiNode``.

Pure apart from reading the host's interface names (``/sys/class/net``) for validation.
With no ``multi_node_args`` the result is ``MultiNode()`` with ``configured=False``: the
run stays single-node exactly as without this module.

Keys (values may be strings or numbers, as madengine 1.x users write them):

========================  ===========  ==============================================
key                       default      meaning
========================  ===========  ==============================================
``RUNNER``                torchrun     ``torchrun`` or ``mpirun``
``MASTER_ADDR``           localhost    rank 0's address, as the other nodes reach it
``MASTER_PORT``           6006         torchrun's rendezvous port (madengine 1.x)
``NNODES``                1            number of nodes
``NODE_RANK``             0            this node, 0 .. NNODES-1
``NCCL_SOCKET_IFNAME``    ""           exported; NCCL syntax (prefix, ``=exact``,
                                       ``^exclude``, comma lists)
``GLOO_SOCKET_IFNAME``    ""           exported; comma list of exact interface names
``HOST_LIST`` / ``HOSTS``  ""           mpirun hosts: ``"h1:4,h2:4"`` or a list
``HOSTFILE``              ""           mpirun ``--hostfile`` instead of a host list
``MAD_RUNTIME_NGPUS``     GPUs given   madengine 1.x: processes per node (also
                                       ``NPROC_PER_NODE``); default = GPUs allocated,
                                       1 without GPUs
========================  ===========  ==============================================

Top-level context keys ``rendezvous_port`` (default ``MASTER_PORT + 1``) and
``rendezvous_timeout`` (seconds, default 300) configure the plugin's own barrier between
the nodes' pytest processes (``rendezvous.py``).
"""

from __future__ import annotations

import difflib
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_madengine.errors import UsageError

RUNNERS = ("torchrun", "mpirun")
DEFAULT_MASTER_ADDR = "localhost"
DEFAULT_MASTER_PORT = 6006  # madengine 1.x
DEFAULT_RENDEZVOUS_TIMEOUT = 300.0
NET_DIR = Path("/sys/class/net")

KEYS = ("RUNNER", "MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "NCCL_SOCKET_IFNAME",
        "GLOO_SOCKET_IFNAME", "HOST_LIST", "HOSTS", "HOSTFILE", "MAD_RUNTIME_NGPUS", "NPROC_PER_NODE")


@dataclass(frozen=True)
class Host:
    name: str
    slots: int | None = None  # None: the node's processes per node

    def spec(self, default_slots: int) -> str:
        return f"{self.name}:{self.slots if self.slots is not None else default_slots}"


@dataclass(frozen=True)
class MultiNode:
    """Where this node stands in a multi-node run (madengine 1.x ``multi_node_args``)."""

    configured: bool = False  # multi_node_args was given
    runner: str = "torchrun"
    master_addr: str = DEFAULT_MASTER_ADDR
    master_port: int = DEFAULT_MASTER_PORT
    nnodes: int = 1
    node_rank: int = 0
    nccl_socket_ifname: str = ""
    gloo_socket_ifname: str = ""
    hosts: tuple[Host, ...] = ()
    hostfile: str = ""
    nproc_per_node: int | None = None  # explicit override; None = GPUs allocated (1 without)
    rendezvous_port: int = DEFAULT_MASTER_PORT + 1
    rendezvous_timeout: float = DEFAULT_RENDEZVOUS_TIMEOUT
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def multi_node(self) -> bool:
        """More than one node takes part."""
        return self.nnodes > 1

    @property
    def needs_barrier(self) -> bool:
        """Every node runs pytest and must start together: torchrun over several nodes.
        mpirun starts the other nodes' ranks itself (ssh), from node 0 only."""
        return self.configured and self.multi_node and self.runner == "torchrun"

    @property
    def reports_performance(self) -> bool:
        """This node's item carries the run's performance (rank 0)."""
        return self.node_rank == 0

    def nproc(self, allocated_gpus: int) -> int:
        """Processes per node: the explicit override, else the GPUs allocated, 1 without GPUs."""
        return self.nproc_per_node if self.nproc_per_node is not None else max(1, allocated_gpus)

    def env(self) -> dict[str, str]:
        """Variables exported to the script with the runner (empty interface names omitted:
        an empty GLOO_SOCKET_IFNAME is not 'unset' for every library)."""
        env = {
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            "NNODES": str(self.nnodes),
            "NODE_RANK": str(self.node_rank),
        }
        if self.nccl_socket_ifname:
            env["NCCL_SOCKET_IFNAME"] = self.nccl_socket_ifname
        if self.gloo_socket_ifname:
            env["GLOO_SOCKET_IFNAME"] = self.gloo_socket_ifname
        return env

    def properties(self) -> dict[str, str]:
        """JUnit properties / perf.csv facts of a multi-node run."""
        return {"node_rank": str(self.node_rank), "master_addr": self.master_addr}


# ---------------------------------------------------------------------------- parsing


def _where(key: str) -> str:
    return f"context key 'multi_node_args': '{key}'"


def _int(key: str, value: Any, *, lo: int, hi: int | None = None, where: str | None = None) -> int:
    where = where or _where(key)
    if isinstance(value, bool) or value is None:
        raise UsageError(f"{where} must be an integer, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise UsageError(f"{where} must be an integer, got {value!r}")
        value = int(value)
    try:
        number = int(str(value).strip())
    except ValueError:
        raise UsageError(f"{where} must be an integer, got {value!r}") from None
    if number < lo or (hi is not None and number > hi):
        span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise UsageError(f"{where} is out of range: {number} (must be {span})")
    return number


def _str(key: str, value: Any) -> str:
    if isinstance(value, (dict, list, tuple, set)) or isinstance(value, bool):
        raise UsageError(f"{_where(key)} must be a string, got {type(value).__name__}")
    return "" if value is None else str(value).strip()


def host_interfaces(net_dir: Path = NET_DIR) -> set[str]:
    """Interface names of this host (of this network namespace)."""
    try:
        names = {p.name for p in net_dir.iterdir()}
    except OSError:
        names = set()
    if not names:
        try:
            names = {name for _, name in socket.if_nameindex()}
        except OSError:
            pass
    return names


def _check_ifnames(key: str, value: str, have: set[str], *, nccl: bool) -> None:
    """Each listed interface must exist here. NCCL's syntax: ``eth`` is a prefix, ``=eth0``
    exact, ``^docker`` an exclusion (not checked). Gloo: exact names."""
    if not value:
        return
    shown = ", ".join(sorted(have)) or "none found"
    if nccl and value.startswith("^"):
        return
    exact = not nccl
    body = value
    if nccl and value.startswith("="):
        exact, body = True, value[1:]
    for name in (n.strip() for n in body.split(",")):
        if not name:
            raise UsageError(f"{_where(key)} has an empty interface name in {value!r}")
        ok = name in have if exact else any(h.startswith(name) for h in have)
        if not ok:
            raise UsageError(f"{_where(key)}: no network interface {name!r} on this host "
                             f"(interfaces: {shown})")


def parse_hosts(key: str, value: Any) -> tuple[Host, ...]:
    """``"h1:4,h2:4"``, ``"h1 h2"``, ``["h1:4", "h2"]`` -> hosts with optional slots."""
    if value in (None, ""):
        return ()
    if isinstance(value, str):
        items: Iterable[Any] = value.replace(" ", ",").split(",")
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise UsageError(f"{_where(key)} must be a string like 'h1:4,h2:4' or a list, got {type(value).__name__}")
    hosts = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        name, sep, slots = text.rpartition(":") if ":" in text else (text, "", "")
        if not sep:
            name = text
        if not name or any(c.isspace() for c in name):
            raise UsageError(f"{_where(key)}: bad host entry {text!r}")
        count = _int(key, slots, lo=1, where=f"{_where(key)}: slots of host {name!r}") if sep else None
        hosts.append(Host(name, count))
    return tuple(hosts)


def from_context(ctx: Mapping[str, Any], *, net_dir: Path = NET_DIR,
                 file_exists: Any = os.path.exists) -> MultiNode:
    """Parse and validate ``multi_node_args`` (and ``rendezvous_port``/``rendezvous_timeout``).
    Raises UsageError naming the key for anything that cannot work."""
    raw = ctx.get("multi_node_args")
    timeout = ctx.get("rendezvous_timeout", DEFAULT_RENDEZVOUS_TIMEOUT)
    try:
        rdzv_timeout = float(timeout)
        if isinstance(timeout, bool) or not rdzv_timeout > 0 or rdzv_timeout != rdzv_timeout:
            raise ValueError
    except (TypeError, ValueError):
        raise UsageError(f"context key 'rendezvous_timeout' must be a number of seconds > 0, got {timeout!r}") from None
    if not raw:
        return MultiNode(rendezvous_timeout=rdzv_timeout)
    if not isinstance(raw, Mapping):
        raise UsageError(f"context key 'multi_node_args' must be a dict, got {type(raw).__name__}")
    args: dict[str, Any] = {}
    for key, value in raw.items():
        upper = str(key).upper()
        if upper not in KEYS:
            close = difflib.get_close_matches(upper, KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UsageError(f"context key 'multi_node_args': unknown key '{key}'{hint} "
                             f"(known: {', '.join(KEYS)})")
        args[upper] = value

    runner = _str("RUNNER", args.get("RUNNER", "torchrun")).lower() or "torchrun"
    if runner not in RUNNERS:
        raise UsageError(f"{_where('RUNNER')} must be one of {', '.join(RUNNERS)}, got {args['RUNNER']!r}")
    nnodes = _int("NNODES", args.get("NNODES", 1), lo=1)
    node_rank = _int("NODE_RANK", args.get("NODE_RANK", 0), lo=0)
    if node_rank >= nnodes:
        raise UsageError(f"{_where('NODE_RANK')} is out of range: {node_rank} (NNODES is {nnodes}, "
                         f"so ranks are 0..{nnodes - 1})")
    master_addr = _str("MASTER_ADDR", args.get("MASTER_ADDR", DEFAULT_MASTER_ADDR)) or DEFAULT_MASTER_ADDR
    if any(c.isspace() for c in master_addr):
        raise UsageError(f"{_where('MASTER_ADDR')} must be a host name or address, got {master_addr!r}")
    master_port = _int("MASTER_PORT", args.get("MASTER_PORT", DEFAULT_MASTER_PORT), lo=1, hi=65535)
    default_rdzv = master_port + 1 if master_port < 65535 else master_port - 1
    rdzv_port = _int("rendezvous_port", ctx.get("rendezvous_port", default_rdzv), lo=1, hi=65535,
                     where="context key 'rendezvous_port'")
    if rdzv_port == master_port:
        raise UsageError(f"context key 'rendezvous_port' ({rdzv_port}) must differ from MASTER_PORT: "
                         "torchrun listens there")

    have = host_interfaces(net_dir)
    nccl = _str("NCCL_SOCKET_IFNAME", args.get("NCCL_SOCKET_IFNAME", ""))
    gloo = _str("GLOO_SOCKET_IFNAME", args.get("GLOO_SOCKET_IFNAME", ""))
    _check_ifnames("NCCL_SOCKET_IFNAME", nccl, have, nccl=True)
    _check_ifnames("GLOO_SOCKET_IFNAME", gloo, have, nccl=False)

    if "HOST_LIST" in args and "HOSTS" in args and args["HOST_LIST"] and args["HOSTS"]:
        raise UsageError("context key 'multi_node_args': give 'HOST_LIST' or 'HOSTS', not both")
    host_key = "HOSTS" if args.get("HOSTS") else "HOST_LIST"
    hosts = parse_hosts(host_key, args.get(host_key))
    hostfile = _str("HOSTFILE", args.get("HOSTFILE", ""))
    if hostfile and hosts:
        raise UsageError(f"context key 'multi_node_args': give '{host_key}' or 'HOSTFILE', not both")
    if hostfile and not file_exists(hostfile):
        raise UsageError(f"{_where('HOSTFILE')}: {hostfile} does not exist")

    nproc_key = "NPROC_PER_NODE" if "NPROC_PER_NODE" in args else "MAD_RUNTIME_NGPUS"
    nproc = _int(nproc_key, args[nproc_key], lo=1) if args.get(nproc_key) not in (None, "") else None

    warnings: list[str] = []
    if runner == "mpirun":
        if nnodes > 1 and not hosts and not hostfile:
            raise UsageError("context key 'multi_node_args': RUNNER mpirun with NNODES "
                             f"{nnodes} needs 'HOST_LIST' (e.g. 'node1:4,node2:4') or 'HOSTFILE'")
        if nnodes > 1 and node_rank != 0:
            raise UsageError(f"{_where('NODE_RANK')}: RUNNER mpirun starts every rank from node 0 "
                             f"(over ssh); run pytest on node 0 only, not with NODE_RANK {node_rank}")
    elif hosts or hostfile:
        warnings.append("multi_node_args: HOST_LIST/HOSTFILE are used by RUNNER mpirun only; ignored for torchrun")
    if nnodes > 1 and master_addr in ("localhost", "127.0.0.1", "::1") and runner == "torchrun":
        warnings.append(f"multi_node_args: NNODES {nnodes} with MASTER_ADDR {master_addr}: only nodes on "
                        "this host can reach it")
    return MultiNode(
        configured=True, runner=runner, master_addr=master_addr, master_port=master_port, nnodes=nnodes,
        node_rank=node_rank, nccl_socket_ifname=nccl, gloo_socket_ifname=gloo, hosts=hosts,
        hostfile=hostfile, nproc_per_node=nproc, rendezvous_port=rdzv_port, rendezvous_timeout=rdzv_timeout,
        warnings=tuple(warnings),
    )


def launch_env(mn: MultiNode, allocated_gpus: int) -> dict[str, str]:
    """What a configured ``multi_node_args`` adds to the script's environment: the runner
    string, ``MAD_LAUNCHER``, MASTER_ADDR/MASTER_PORT/NNODES/NODE_RANK and the interface
    variables. Empty when ``multi_node_args`` was not given (single-node stays as it is)."""
    from pytest_madengine.multinode.launchers import mpirun, torchrun

    if not mn.configured:
        return {}
    env = mn.env()
    if mn.runner == "mpirun":
        env["MAD_MULTI_NODE_RUNNER"] = mpirun.multi_node(mn, allocated_gpus)
        env.update(mpirun.ROOT_ENV)
    else:
        env["MAD_MULTI_NODE_RUNNER"] = torchrun.multi_node(mn, allocated_gpus)
    env["MAD_LAUNCHER"] = mn.runner
    return env
