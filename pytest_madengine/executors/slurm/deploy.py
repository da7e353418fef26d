"""madengine 2.x's ``slurm`` key: the model card's and the context's settings, merged key by
key (the context wins), validated once per model before anything is queued. Pure.

Keys (madengine 2.x's, plus ours at the end)::

    partition          #SBATCH --partition (default: the cluster's default partition)
    nodes              1; one task per node (2 or more: multi-node, the launcher's per-node form)
    gpus_per_node      #SBATCH --gpus-per-node; default the model's n_gpus (0: none asked)
    time               #SBATCH --time; default the model timeout in whole minutes + 1, else
                       12:00:00 (one node) / 24:00:00 (several), madengine's defaults
    exclusive          true: #SBATCH --exclusive
    account, qos, constraint, exclude, nodelist, reservation, mem, mail_user, mail_type
                       the matching #SBATCH options
    modules            list: ``module load <m>`` in the batch script
    network_interface  NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME on every node; when absent it
                       is detected on each node: ib0.. if an ``ib*`` link exists, else the
                       interface of the default route (madengine's rule)
    env_vars           exported on every node (the context's top-level ``env_vars`` too)
    shared_data        a folder every node sees: MAD_DATAHOME on the nodes
    output_dir         where the batch script and the nodes' output go (default mad_logs)
    results_dir        slurm_multi: where the script writes its perf*.csv
    preflight          ours: check the nodes before submitting (alias: enable_node_check)
    queue_timeout      ours: seconds a job may wait in the queue (default 3600)

Every problem is a ``UsageError`` naming ``slurm.<key>`` and where it came from.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_madengine.context import merge
from pytest_madengine.errors import UsageError
from pytest_madengine.executors.slurm.args import time_to_seconds

KEYS = ("partition", "nodes", "gpus_per_node", "time", "exclusive", "account", "qos", "constraint",
        "exclude", "nodelist", "reservation", "mem", "mail_user", "mail_type", "modules",
        "network_interface", "env_vars", "shared_data", "output_dir", "results_dir", "preflight",
        "enable_node_check", "queue_timeout")
# madengine keys we accept and say we do not act on (their users' files must keep working)
NO_EFFECT = ("shared_workspace", "auto_cleanup_nodes", "allow_submit_without_clean_nodes",
             "verbose_node_check")
DEFAULT_QUEUE_TIMEOUT_S = 3600.0
DEFAULT_TIME_ONE_NODE = "12:00:00"
DEFAULT_TIME_NODES = "24:00:00"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_HOSTLIST = re.compile(r"[A-Za-z0-9_.\-\[\],]+")
_CONSTRAINT = re.compile(r"[A-Za-z0-9_.\-&|\[\]*:()!,]+")
_MODULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+/\-]*")
_IFACE = re.compile(r"[=^]?[A-Za-z0-9_.\-]+(,[A-Za-z0-9_.\-]+)*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MEM = re.compile(r"\d+[KMGT]?")
_MAIL_TYPE = re.compile(r"[A-Z_0-9]+(,[A-Z_0-9]+)*")


@dataclass(frozen=True)
class SlurmSettings:
    """One model's ``slurm`` settings, validated. ``time`` is "" until resolved for a model."""

    partition: str = ""
    nodes: int = 1
    gpus_per_node: int | None = None  # None: the model's n_gpus
    time: str = ""
    exclusive: bool = True
    account: str = ""
    qos: str = ""
    constraint: str = ""
    exclude: str = ""
    nodelist: str = ""
    reservation: str = ""
    mem: str = ""
    mail_user: str = ""
    mail_type: str = ""
    modules: tuple[str, ...] = ()
    network_interface: str = ""
    env_vars: Mapping[str, str] = field(default_factory=dict)
    shared_data: str = ""
    output_dir: str = ""
    output_dir_from_card: bool = False
    results_dir: str = ""
    results_dir_from_card: bool = False
    preflight: bool = False
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT_S
    ignored: tuple[str, ...] = ()  # madengine keys given that have no effect here

    def sbatch_options(self) -> list[tuple[str, str]]:
        """(option, value) pairs for #SBATCH lines, in a fixed order; value "" = a flag."""
        out: list[tuple[str, str]] = []
        if self.partition:
            out.append(("--partition", self.partition))
        if self.exclusive:
            out.append(("--exclusive", ""))
        for opt, value in (("--account", self.account), ("--qos", self.qos), ("--constraint", self.constraint),
                           ("--exclude", self.exclude), ("--nodelist", self.nodelist),
                           ("--reservation", self.reservation), ("--mem", self.mem),
                           ("--mail-user", self.mail_user), ("--mail-type", self.mail_type)):
            if value:
                out.append((opt, value))
        return out


def key(name: str) -> str:
    return f"slurm.{name}"


def _where(name: str, origin: Mapping[str, str]) -> str:
    return f"{key(name)} ({origin.get(name, 'context')})"


def _str(name: str, value: Any, origin: Mapping[str, str], pattern: re.Pattern[str] | None = None,
         what: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise UsageError(f"{_where(name, origin)} must be a string, got {type(value).__name__} ({value!r})")
    text = str(value).strip()
    if text and pattern is not None and not pattern.fullmatch(text):
        raise UsageError(f"{_where(name, origin)}: {text!r} is not {what}")
    return text


def _int(name: str, value: Any, origin: Mapping[str, str], *, lo: int) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        number = int(value)
    if number is None:
        raise UsageError(f"{_where(name, origin)} must be an integer, got {value!r}")
    if number < lo:
        raise UsageError(f"{_where(name, origin)} must be >= {lo}, got {number}")
    return number


def _bool(name: str, value: Any, origin: Mapping[str, str]) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, str)) and str(value).strip().lower() in ("1", "true", "yes", "on", "0", "false",
                                                                          "no", "off"):
        return str(value).strip().lower() in ("1", "true", "yes", "on")
    raise UsageError(f"{_where(name, origin)} must be true or false, got {value!r}")


def _env(name: str, value: Any, origin: Mapping[str, str]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UsageError(f"{_where(name, origin)} must be a dict of NAME: value, got {type(value).__name__}")
    out = {}
    for var, val in value.items():
        if not isinstance(var, str) or not _ENV_NAME.fullmatch(var):
            raise UsageError(f"{_where(name, origin)}: {var!r} is not an environment variable name "
                             "(letters, digits and _, not starting with a digit)")
        if isinstance(val, (dict, list, tuple, set)) or val is None:
            raise UsageError(f"{_where(name, origin)}: value of {var!r} must be a string or number, "
                             f"got {type(val).__name__}")
        out[var] = str(val).lower() if isinstance(val, bool) else str(val)
    return out


def merged(card: Mapping[str, Any], context: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The card's ``slurm`` under the context's (key by key), and where each key came from."""
    own = card.get("slurm")
    given = context.get("slurm")
    if own is not None and not isinstance(own, Mapping):
        raise UsageError(f"model card field 'slurm' must be an object, got {type(own).__name__}")
    if given is not None and not isinstance(given, Mapping):
        raise UsageError(f"context key 'slurm' must be a dict, got {type(given).__name__}")
    own, given = dict(own or {}), dict(given or {})
    origin = {str(k): "model card" for k in own}
    origin.update({str(k): "context" for k in given})
    return merge(own, given), origin


def job_nodes(card: Mapping[str, Any], context: Mapping[str, Any]) -> int | None:
    """``slurm.nodes`` (the card's under the context's) when it is a count: the size of the job,
    so the launcher's node count. Anything else is left to ``parse``, which names the field."""
    try:
        nodes = merged(card, context)[0].get("nodes")
    except UsageError:
        return None
    if isinstance(nodes, str) and nodes.strip().isdigit():
        nodes = int(nodes)
    return nodes if isinstance(nodes, int) and not isinstance(nodes, bool) and nodes >= 1 else None


def parse(raw: Mapping[str, Any], origin: Mapping[str, str] | None = None,
          top_env: Mapping[str, Any] | None = None) -> SlurmSettings:
    """Validate merged ``slurm`` settings (``top_env``: the context's top-level ``env_vars``,
    under ``slurm.env_vars``)."""
    origin = dict(origin or {})
    data = {str(k): v for k, v in raw.items()}
    for name in data:
        if name not in KEYS and name not in NO_EFFECT:
            close = difflib.get_close_matches(name, [*KEYS, *NO_EFFECT], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(KEYS)})"
            raise UsageError(f"{_where(name, origin)}: unknown key{hint}")
    nodes = _int("nodes", data["nodes"], origin, lo=1) if data.get("nodes") is not None else 1
    gpus = data.get("gpus_per_node")
    time = ""
    if data.get("time") not in (None, ""):
        try:
            time, _ = time_to_seconds(data["time"])
        except ValueError as exc:
            raise UsageError(f"{_where('time', origin)}: {exc}") from None
    modules = data.get("modules") or []
    if isinstance(modules, str) or not isinstance(modules, (list, tuple)):
        raise UsageError(f"{_where('modules', origin)} must be a list of module names, got {modules!r}")
    mods = tuple(_str("modules", m, origin, _MODULE, "a module name such as 'rocm/6.2'") for m in modules)
    env = {k: str(v) for k, v in _env("env_vars", top_env, {"env_vars": "context env_vars"}).items()}
    env.update(_env("env_vars", data.get("env_vars"), origin))
    shared = _str("shared_data", data.get("shared_data"), origin)
    if shared and not shared.startswith("/"):
        raise UsageError(f"{_where('shared_data', origin)}: give an absolute path every node sees, got {shared!r}")
    qt = data.get("queue_timeout")
    queue_s = DEFAULT_QUEUE_TIMEOUT_S
    if qt is not None:
        if isinstance(qt, bool) or not isinstance(qt, (int, float, str)):
            raise UsageError(f"{_where('queue_timeout', origin)} must be a number of seconds, got {qt!r}")
        try:
            queue_s = float(qt)
        except ValueError:
            raise UsageError(f"{_where('queue_timeout', origin)} must be a number of seconds, got {qt!r}") from None
        if not queue_s > 0 or math.isinf(queue_s):
            raise UsageError(f"{_where('queue_timeout', origin)} must be a positive number of seconds, got {qt!r}")
    preflight = False
    for name in ("preflight", "enable_node_check"):
        if data.get(name) is not None:
            preflight = preflight or _bool(name, data[name], origin)
    nodelist = _str("nodelist", data.get("nodelist"), origin, _HOSTLIST, "a node list such as 'n[1-2],n4'")
    return SlurmSettings(
        partition=_str("partition", data.get("partition"), origin, _NAME, "a partition name"),
        nodes=nodes,
        gpus_per_node=None if gpus in (None, "") else _int("gpus_per_node", gpus, origin, lo=0),
        time=time,
        exclusive=_bool("exclusive", data["exclusive"], origin) if data.get("exclusive") is not None else True,
        account=_str("account", data.get("account"), origin, _NAME, "an account name"),
        qos=_str("qos", data.get("qos"), origin, _NAME, "a QOS name"),
        constraint=_str("constraint", data.get("constraint"), origin, _CONSTRAINT, "a feature expression"),
        exclude=_str("exclude", data.get("exclude"), origin, _HOSTLIST, "a node list such as 'n[1-2],n4'"),
        nodelist=nodelist.replace(" ", ""),
        reservation=_str("reservation", data.get("reservation"), origin, _NAME, "a reservation name"),
        mem=_str("mem", data.get("mem"), origin, _MEM, "a size such as '64G'"),
        mail_user=_str("mail_user", data.get("mail_user"), origin, re.compile(r"[^\s\"'\\]+"), "an address"),
        mail_type=_str("mail_type", data.get("mail_type"), origin, _MAIL_TYPE, "a list such as 'END,FAIL'"),
        modules=mods,
        network_interface=_str("network_interface", data.get("network_interface"), origin, _IFACE,
                               "an interface name such as 'ib0' or 'eth0'"),
        env_vars=env,
        shared_data=shared,
        output_dir=_str("output_dir", data.get("output_dir"), origin),
        output_dir_from_card=origin.get("output_dir") == "model card",
        results_dir=_str("results_dir", data.get("results_dir"), origin),
        results_dir_from_card=origin.get("results_dir") == "model card",
        preflight=preflight,
        queue_timeout=queue_s,
        ignored=tuple(sorted(n for n in data if n in NO_EFFECT)),
    )


def settings_for(card: Mapping[str, Any], context: Mapping[str, Any],
                 distributed: Mapping[str, Any] | None = None) -> SlurmSettings:
    """The model's settings; ``nodes`` defaults to ``distributed.nnodes`` and must agree with it."""
    raw, origin = merged(card, context)
    nn = (distributed or {}).get("nnodes")
    if raw.get("nodes") is None and nn is not None:
        raw["nodes"], origin["nodes"] = nn, "distributed.nnodes"
    out = parse(raw, origin, context.get("env_vars") if isinstance(context.get("env_vars"), Mapping) else None)
    check_nnodes(out, distributed or {})
    return out


def resolve_gpus(s: SlurmSettings, model_n_gpus: int) -> int:
    """GPUs per node: ``gpus_per_node``, else the model's n_gpus (madengine's preset 8 would
    override the model; we do not)."""
    if s.gpus_per_node is not None:
        return s.gpus_per_node
    if model_n_gpus < 0:
        raise UsageError(f"n_gpus -1 (all GPUs) has no meaning on a SLURM node: set {key('gpus_per_node')}")
    return model_n_gpus


def resolve_time(s: SlurmSettings, timeout: float | None) -> tuple[str, int]:
    """(--time text, seconds): ``time``, else the model timeout rounded up to minutes plus one
    (so our own timeout fires first and leaves a row), else madengine's defaults."""
    if s.time:
        return time_to_seconds(s.time)
    if timeout is not None:
        minutes = math.ceil(timeout / 60) + 1
        return time_to_seconds(str(minutes))
    return time_to_seconds(DEFAULT_TIME_NODES if s.nodes > 1 else DEFAULT_TIME_ONE_NODE)


def check_nnodes(s: SlurmSettings, distributed: Mapping[str, Any]) -> None:
    """``distributed.nnodes``, when given, must agree with ``slurm.nodes`` (the job's size)."""
    nn = distributed.get("nnodes")
    if nn is None:
        return
    try:
        value = int(nn)
    except (TypeError, ValueError):
        return  # the launcher's own validation names it
    if value != s.nodes:
        raise UsageError(f"distributed.nnodes ({value}) and {key('nodes')} ({s.nodes}) disagree: the job has "
                         f"{key('nodes')} nodes; give one of them")
