"""The context's ``slurm_args``, parsed and validated once when the run starts.

Keys (madengine's seed keys first, then ours)::

    FRAMEWORK       run scripts/<FRAMEWORK>/run.sh, which submits the job(s) itself
    PREFILL_NODES   with FRAMEWORK: disaggregated prefill/decode node counts
    DECODE_NODES
    PARTITION       required; must be a partition `sinfo` knows
    TIME            required; SLURM's forms MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
    DOCKER_IMAGE    '' = the script's default (native path: run on the node itself)
    NODES           native path: nodes of the job (default 1; with FRAMEWORK passed on)
    GPUS_PER_NODE   default the model's n_gpus; 0 = no GPUs requested
    ACCOUNT, QOS, NODELIST, EXCLUDE
    EXTRA_SBATCH    list of further sbatch options, e.g. ['--exclusive', '--mem=8G']
    QUEUE_TIMEOUT   seconds a job may stay PENDING before it is cancelled (default 3600)
    SUBMIT_AHEAD    upcoming items of this pytest process submitted before their turn (default 16)

Every problem is a ``UsageError`` that names the key, raised before anything is queued.
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_madengine.errors import UsageError

KEYS = ("FRAMEWORK", "PREFILL_NODES", "DECODE_NODES", "PARTITION", "TIME", "DOCKER_IMAGE", "NODES",
        "GPUS_PER_NODE", "ACCOUNT", "QOS", "NODELIST", "EXCLUDE", "EXTRA_SBATCH", "QUEUE_TIMEOUT",
        "SUBMIT_AHEAD")
REQUIRED = ("PARTITION", "TIME")
DEFAULT_QUEUE_TIMEOUT_S = 3600.0
DEFAULT_SUBMIT_AHEAD = 16

# sbatch options that slurm_args (or we) already set: EXTRA_SBATCH must not fight them.
RESERVED_OPTIONS = {
    "--nodes": "NODES", "-N": "NODES", "--partition": "PARTITION", "-p": "PARTITION",
    "--time": "TIME", "-t": "TIME", "--gpus-per-node": "GPUS_PER_NODE", "--account": "ACCOUNT",
    "-A": "ACCOUNT", "--qos": "QOS", "-q": "QOS", "--nodelist": "NODELIST", "-w": "NODELIST",
    "--exclude": "EXCLUDE", "-x": "EXCLUDE", "--job-name": "", "-J": "", "--output": "", "-o": "",
    "--error": "", "-e": "", "--ntasks-per-node": "", "--parsable": "", "--wrap": "", "--chdir": "",
    "-D": "",
}

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_HOSTLIST_RE = re.compile(r"[A-Za-z0-9_.\-\[\],]+")
_IMAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-/:@]*")
_TIME_FORMS = (  # (regex, field names); SLURM's --time formats
    (re.compile(r"(\d+)"), ("m",)),
    (re.compile(r"(\d+):(\d+)"), ("m", "s")),
    (re.compile(r"(\d+):(\d+):(\d+)"), ("h", "m", "s")),
    (re.compile(r"(\d+)-(\d+)"), ("d", "h")),
    (re.compile(r"(\d+)-(\d+):(\d+)"), ("d", "h", "m")),
    (re.compile(r"(\d+)-(\d+):(\d+):(\d+)"), ("d", "h", "m", "s")),
)


@dataclass(frozen=True)
class SlurmArgs:
    partition: str
    time: str  # as SLURM reads it
    time_s: int
    framework: str = ""
    prefill_nodes: int | None = None
    decode_nodes: int | None = None
    docker_image: str = ""
    nodes: int = 1
    gpus_per_node: int | None = None  # None: the model's n_gpus
    account: str = ""
    qos: str = ""
    nodelist: str = ""
    exclude: str = ""
    extra_sbatch: tuple[str, ...] = ()
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT_S
    submit_ahead: int = DEFAULT_SUBMIT_AHEAD

    def gpus_for(self, model_n_gpus: int) -> int:
        """GPUs per node for a model: GPUS_PER_NODE, else the model's n_gpus."""
        if self.gpus_per_node is not None:
            return self.gpus_per_node
        if model_n_gpus < 0:
            raise UsageError("n_gpus -1 (all GPUs) has no meaning on a SLURM node: "
                             "set slurm_args GPUS_PER_NODE")
        return model_n_gpus

    def framework_env(self, model_name: str) -> dict[str, str]:
        """What a framework's run.sh reads (madengine's seed names)."""
        env = {"MODEL_NAME": model_name, "PARTITION": self.partition, "TIME": self.time,
               "DOCKER_IMAGE": self.docker_image, "NODES": str(self.nodes), "FRAMEWORK": self.framework}
        if self.prefill_nodes is not None and self.decode_nodes is not None:
            env["PREFILL_NODES"], env["DECODE_NODES"] = str(self.prefill_nodes), str(self.decode_nodes)
        if self.gpus_per_node is not None:
            env["GPUS_PER_NODE"] = str(self.gpus_per_node)
        for key, value in (("ACCOUNT", self.account), ("QOS", self.qos), ("NODELIST", self.nodelist),
                           ("EXCLUDE", self.exclude)):
            if value:
                env[key] = value
        return env


def _err(key: str, message: str) -> UsageError:
    return UsageError(f"slurm_args {key}: {message}")


def time_to_seconds(value: Any) -> tuple[str, int]:
    """(text, seconds) for a SLURM time limit; raises ValueError with the reason."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"must be a string such as '30' or '02:00:00', got {type(value).__name__}")
    text = str(value).strip()
    for regex, fields in _TIME_FORMS:
        m = regex.fullmatch(text)
        if not m:
            continue
        parts = dict(zip(fields, (int(g) for g in m.groups())))
        if len(fields) > 1:  # the leading field is free, the others have their clock ranges
            limits = {"h": 24, "m": 60, "s": 60}
            for name in fields[1:]:
                if parts[name] >= limits[name]:
                    raise ValueError(f"{text!r}: {'hours' if name == 'h' else 'minutes' if name == 'm' else 'seconds'} "
                                     f"must be below {limits[name]}")
        seconds = (parts.get("d", 0) * 86400 + parts.get("h", 0) * 3600 + parts.get("m", 0) * 60
                   + parts.get("s", 0))
        if seconds <= 0:
            raise ValueError(f"{text!r} is no time at all (SLURM reads 0 as 'no limit')")
        return text, seconds
    raise ValueError(f"{text!r} is not a SLURM time: use MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS")


def _int(key: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool):
        raise _err(key, f"must be an integer, got {value!r}")
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise _err(key, f"must be an integer, got {value!r}") from None
    if number < minimum:
        raise _err(key, f"must be {'a positive integer' if minimum == 1 else f'an integer >= {minimum}'}, got {value!r}")
    return number


def _str(key: str, value: Any, pattern: re.Pattern[str] | None = None, what: str = "") -> str:
    if value is None:
        return ""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise _err(key, f"must be a string, got {type(value).__name__}")
    text = str(value).strip()
    if text and pattern is not None and not pattern.fullmatch(text):
        raise _err(key, f"{text!r} is not {what}")
    return text


def check_image(value: str) -> str:
    """'' or a plausible image reference; a template placeholder is refused before queueing."""
    if not value:
        return ""
    if any(c in value for c in "<>{}$"):
        raise _err("DOCKER_IMAGE", f"{value!r} looks like a placeholder, not an image; give a real image "
                                   "(e.g. 'rocm/sgl-dev:latest') or '' for the script's default")
    if not _IMAGE_RE.fullmatch(value) or value.endswith((":", "/", "@")) or "//" in value:
        raise _err("DOCKER_IMAGE", f"{value!r} is not an image reference such as 'registry:5000/name:tag'")
    return value


def check_extra_sbatch(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise _err("EXTRA_SBATCH", f"must be a list of sbatch options such as ['--exclusive', '--mem=8G'], "
                                   f"got {value!r}")
    out = []
    for option in value:
        if not isinstance(option, str) or not option.strip():
            raise _err("EXTRA_SBATCH", f"each entry must be a non-empty string, got {option!r}")
        option = option.strip()
        if any(c in option for c in "\n\r\0"):
            raise _err("EXTRA_SBATCH", f"{option!r} holds a line break (each entry becomes one #SBATCH line)")
        try:
            words = shlex.split(option)
        except ValueError as exc:
            raise _err("EXTRA_SBATCH", f"{option!r} cannot be split: {exc}") from None
        if not words or not words[0].startswith("-"):
            raise _err("EXTRA_SBATCH", f"{option!r} is not an option (it must start with '-')")
        for word in words:
            if not word.startswith("-"):
                continue
            name = word.split("=", 1)[0]
            if not name.startswith("--") and len(name) > 2:
                name = name[:2]  # -N2 -> -N
            if name in RESERVED_OPTIONS:
                owner = RESERVED_OPTIONS[name]
                hint = f"use slurm_args {owner} instead" if owner else "pytest-madengine sets it itself"
                raise _err("EXTRA_SBATCH", f"{option!r} sets {name}: {hint}")
        out.append(option)
    return tuple(out)


def parse(raw: Any) -> SlurmArgs:
    """Validate the context's ``slurm_args`` dict into ``SlurmArgs``."""
    if not isinstance(raw, Mapping):
        raise UsageError(f"context key 'slurm_args' must be a dict, got {type(raw).__name__}")
    data = {str(k): v for k, v in raw.items()}
    for key in data:
        if key not in KEYS:
            close = difflib.get_close_matches(key.upper(), KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(KEYS)}"
            raise UsageError(f"slurm_args: unknown key '{key}'{hint}")
    for key in REQUIRED:
        if data.get(key) in (None, ""):
            raise _err(key, "is required (e.g. {'PARTITION': 'debug', 'TIME': '00:30:00'})")
    partition = _str("PARTITION", data["PARTITION"], _NAME_RE, "a partition name")
    try:
        time_text, time_s = time_to_seconds(data["TIME"])
    except ValueError as exc:
        raise _err("TIME", str(exc)) from None
    framework = _str("FRAMEWORK", data.get("FRAMEWORK"), _NAME_RE, "a folder name under scripts/")
    prefill = decode = None
    if data.get("PREFILL_NODES") not in (None, "") or data.get("DECODE_NODES") not in (None, ""):
        for key in ("PREFILL_NODES", "DECODE_NODES"):
            if data.get(key) in (None, ""):
                other = "DECODE_NODES" if key == "PREFILL_NODES" else "PREFILL_NODES"
                raise _err(key, f"is required together with {other}")
        if not framework:
            raise _err("PREFILL_NODES", "prefill/decode node counts need a FRAMEWORK that launches the roles")
        prefill = _int("PREFILL_NODES", data["PREFILL_NODES"], minimum=1)
        decode = _int("DECODE_NODES", data["DECODE_NODES"], minimum=1)
    nodes = _int("NODES", data["NODES"], minimum=1) if data.get("NODES") not in (None, "") else None
    if prefill is not None and decode is not None:
        if nodes is not None and nodes != prefill + decode:
            raise _err("NODES", f"is {nodes} but PREFILL_NODES + DECODE_NODES is {prefill + decode}")
        nodes = prefill + decode
    gpus = data.get("GPUS_PER_NODE")
    queue_timeout = data.get("QUEUE_TIMEOUT")
    if queue_timeout in (None, ""):
        queue_s = DEFAULT_QUEUE_TIMEOUT_S
    else:
        try:
            queue_s = float(queue_timeout)
        except (TypeError, ValueError):
            raise _err("QUEUE_TIMEOUT", f"must be a number of seconds, got {queue_timeout!r}") from None
        if queue_s <= 0 or isinstance(queue_timeout, bool):
            raise _err("QUEUE_TIMEOUT", f"must be a positive number of seconds, got {queue_timeout!r}")
    ahead = data.get("SUBMIT_AHEAD")
    return SlurmArgs(
        partition=partition, time=time_text, time_s=time_s, framework=framework,
        prefill_nodes=prefill, decode_nodes=decode,
        docker_image=check_image(_str("DOCKER_IMAGE", data.get("DOCKER_IMAGE"))),
        nodes=nodes or 1,
        gpus_per_node=None if gpus in (None, "") else _int("GPUS_PER_NODE", gpus, minimum=0),
        account=_str("ACCOUNT", data.get("ACCOUNT"), _NAME_RE, "an account name"),
        qos=_str("QOS", data.get("QOS"), _NAME_RE, "a QOS name"),
        nodelist=_str("NODELIST", data.get("NODELIST"), _HOSTLIST_RE, "a node list such as 'n[1-2],n4'"),
        exclude=_str("EXCLUDE", data.get("EXCLUDE"), _HOSTLIST_RE, "a node list such as 'n[1-2],n4'"),
        extra_sbatch=check_extra_sbatch(data.get("EXTRA_SBATCH")),
        queue_timeout=queue_s,
        submit_ahead=DEFAULT_SUBMIT_AHEAD if ahead in (None, "") else _int("SUBMIT_AHEAD", ahead, minimum=0),
    )


def check_partition(args: SlurmArgs, known: Iterable[str]) -> None:
    """``known``: partition names as `sinfo -h -o %P` prints them (the default one ends in '*')."""
    names = sorted({k.strip().rstrip("*") for k in known if k.strip()})
    if args.partition not in names:
        close = difflib.get_close_matches(args.partition, names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise _err("PARTITION", f"'{args.partition}' is not a partition of this cluster "
                                f"(sinfo knows: {', '.join(names) or 'none'}){hint}")


def model_name_from_args(args: Sequence[str], default: str) -> str:
    """madengine's MODEL_NAME: the value of ``--model X`` / ``--model=X`` in the model's args."""
    for i, word in enumerate(args):
        if word == "--model" and i + 1 < len(args):
            return args[i + 1]
        if word.startswith("--model="):
            return word.split("=", 1)[1]
    return default
