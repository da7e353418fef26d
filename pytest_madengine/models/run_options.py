"""Turn madengine's ``additional_docker_run_options`` into Docker SDK keyword arguments.

madengine appends the ``additional_docker_run_options`` string of a models.json
entry (or of the run context) verbatim to the ``docker run`` command line it
builds and hands to a shell.  We start containers through the Docker SDK
instead, and we must never pass that string through a shell: a value such as
``"; rm -rf /"`` has to stay a literal string.  So the string is split with
:func:`shlex.split` and the flags people actually use are parsed here, the way
the docker CLI (spf13/pflag) reads them, into keyword arguments for
``client.containers.create(...)`` / ``run(...)``.

Everything else, and every malformed value, is an error that names the flag:
silently dropping a flag would run the model in a container other than the one
its author asked for, and the benchmark numbers would quietly mean something
else.

The module is pure: the host environment (for a bare ``-e KEY``) is a
parameter, and the Docker SDK is only imported when SDK objects are built.
"""

from __future__ import annotations

import csv
import ipaddress
import posixpath
import re
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any, NamedTuple

from pytest_madengine import masking
from pytest_madengine.errors import MadError

__all__ = [
    "DockerRunOptionsError",
    "GpuRequest",
    "RunOptions",
    "UlimitSpec",
    "VolumeBind",
    "describe",
    "merge_into",
    "parse",
]

_WHERE = "additional_docker_run_options"


class DockerRunOptionsError(MadError):
    """``additional_docker_run_options`` holds a flag we cannot honour, or a malformed value."""


class VolumeBind(NamedTuple):
    """Where a host path or named volume is mounted, and with which options (``ro``, ``rw,z``...)."""

    bind: str
    mode: str


class UlimitSpec(NamedTuple):
    """One ``--ulimit``; -1 means unlimited, as in the Docker API."""

    name: str
    soft: int
    hard: int


@dataclass(frozen=True)
class GpuRequest:
    """One ``--gpus`` request as plain data; ``sdk_kwargs`` turns it into a ``DeviceRequest``.

    ``count`` is -1 for all GPUs and 0 when ``device_ids`` picks them instead.
    """

    count: int
    device_ids: tuple[str, ...] = ()
    capabilities: tuple[tuple[str, ...], ...] = (("gpu",),)
    driver: str = ""
    options: tuple[tuple[str, str], ...] = ()


def _frozen_map() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class RunOptions:
    """The parsed flags; a field left at its default was not given.

    Mappings are read-only views so that a parsed result can be shared between
    models without one of them changing it for the others.
    """

    devices: tuple[str, ...] = ()
    environment: Mapping[str, str] = field(default_factory=_frozen_map)
    volumes: Mapping[str, VolumeBind] = field(default_factory=_frozen_map)
    shm_size: str | None = None
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    ulimits: tuple[UlimitSpec, ...] = ()
    group_add: tuple[str, ...] = ()
    ipc_mode: str | None = None
    network_mode: str | None = None
    privileged: bool | None = None
    nano_cpus: int | None = None
    mem_limit: str | None = None
    memswap_limit: str | None = None
    user: str | None = None
    pid_mode: str | None = None
    hostname: str | None = None
    extra_hosts: Mapping[str, str] = field(default_factory=_frozen_map)
    device_requests: tuple[GpuRequest, ...] = ()
    tmpfs: Mapping[str, str] = field(default_factory=_frozen_map)
    labels: Mapping[str, str] = field(default_factory=_frozen_map)
    sysctls: Mapping[str, str] = field(default_factory=_frozen_map)
    device_cgroup_rules: tuple[str, ...] = ()

    def sdk_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``client.containers.create/run``: only the flags that were given."""
        # Lazy: parsing and planning must work where the Docker SDK is not importable.
        # docker-py ships no type information; which code mypy reports depends on the stubs installed.
        from docker.types import (  # type: ignore[import-not-found,import-untyped,unused-ignore]
            DeviceRequest,
            Ulimit,
        )

        kw: dict[str, Any] = {}
        if self.devices:
            kw["devices"] = list(self.devices)
        if self.environment:
            kw["environment"] = dict(self.environment)
        if self.volumes:
            kw["volumes"] = {host: {"bind": v.bind, "mode": v.mode} for host, v in self.volumes.items()}
        for name in ("cap_add", "cap_drop", "security_opt", "group_add", "device_cgroup_rules"):
            values: tuple[str, ...] = getattr(self, name)
            if values:
                kw[name] = list(values)
        for name in ("shm_size", "ipc_mode", "network_mode", "privileged", "nano_cpus", "mem_limit",
                     "memswap_limit", "user", "pid_mode", "hostname"):
            value = getattr(self, name)
            if value is not None:
                kw[name] = value
        if self.ulimits:
            kw["ulimits"] = [Ulimit(name=u.name, soft=u.soft, hard=u.hard) for u in self.ulimits]
        if self.device_requests:
            kw["device_requests"] = [
                DeviceRequest(driver=r.driver, count=r.count, device_ids=list(r.device_ids) or None,  # type: ignore[arg-type]  # None: any device, as the SDK's own default
                              capabilities=[list(c) for c in r.capabilities], options=dict(r.options))
                for r in self.device_requests
            ]
        for name in ("extra_hosts", "tmpfs", "labels", "sysctls"):
            mapping: Mapping[str, str] = getattr(self, name)
            if mapping:
                kw[name] = dict(mapping)
        return kw


# --------------------------------------------------------------------------- flags

_BOOL_FLAGS = frozenset({"--privileged", "--rm", "--interactive", "--tty", "--detach"})
# Harmless in a `docker run` line people paste from their shell history; we run
# detached without a TTY and remove containers ourselves, whatever they say.
_IGNORED = frozenset({"--rm", "--interactive", "--tty", "--detach"})
_VALUE_FLAGS = frozenset({
    "--device", "--env", "--volume", "--shm-size", "--cap-add", "--cap-drop", "--security-opt", "--ulimit",
    "--group-add", "--ipc", "--network", "--cpus", "--memory", "--memory-swap", "--user", "--pid",
    "--hostname", "--add-host", "--gpus", "--tmpfs", "--label", "--sysctl", "--device-cgroup-rule",
})
_ALIASES = {"--net": "--network"}
_SHORT = {
    "e": "--env", "v": "--volume", "m": "--memory", "u": "--user", "h": "--hostname", "l": "--label",
    "i": "--interactive", "t": "--tty", "d": "--detach", "w": "--workdir",
}
# Known flags we refuse with a reason, so the user knows what to do instead.
_UNSUPPORTED = {
    "--env-file": "read on the host by the docker CLI; use -e KEY=VALUE",
    "--mount": "use -v/--volume HOST:CONTAINER[:OPTIONS]",
    "--workdir": "pytest-madengine owns the container's working directory",
    "--name": "pytest-madengine names its containers",
}


def _fail(message: str) -> DockerRunOptionsError:
    return DockerRunOptionsError(f"{_WHERE}: {message}")


def _unsupported(spelling: str, canonical: str) -> DockerRunOptionsError:
    reason = _UNSUPPORTED.get(canonical)
    return _fail(f"unsupported flag '{spelling}'" + (f" ({reason})" if reason else ""))


def _tokens(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:  # an unbalanced quote: we would have to guess where the value ends
        # Not echoing the text: it often carries tokens in -e values.
        raise _fail(f"cannot split it into words: {exc}") from None


def _flags(tokens: Sequence[str]) -> Iterator[tuple[str, str, str | None]]:
    """Yield ``(spelling, canonical, value)``; ``value`` is None for a bool flag given bare.

    Follows pflag, which the docker CLI uses: ``--flag=value`` or ``--flag value``
    for long flags, and for short ones ``-e value``, ``-evalue``, ``-e=value`` and
    bool clusters such as ``-it`` or ``-ite KEY=value``.
    """
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token.startswith("--") and len(token) > 2:
            spelling, eq, inline = token.partition("=")
            canonical = _ALIASES.get(spelling, spelling)
            if canonical in _BOOL_FLAGS:
                yield spelling, canonical, inline if eq else None
                continue
            if canonical not in _VALUE_FLAGS:
                raise _unsupported(spelling, canonical)
            if eq:
                yield spelling, canonical, inline
            elif i < len(tokens):
                # pflag takes the next word whatever it looks like, so `-e --foo` sets "--foo".
                yield spelling, canonical, tokens[i]
                i += 1
            else:
                raise _fail(f"'{spelling}' needs a value")
        elif token.startswith("-") and len(token) > 1 and not token.startswith("--"):
            cluster = token[1:]
            while cluster:
                letter, cluster = cluster[0], cluster[1:]
                spelling = "-" + letter
                canonical = _SHORT.get(letter, spelling)
                if canonical in _BOOL_FLAGS:
                    if cluster.startswith("="):
                        yield spelling, canonical, cluster[1:]
                        break
                    yield spelling, canonical, None
                    continue
                if canonical not in _VALUE_FLAGS:
                    long = "-" + token.partition("=")[0]
                    if _ALIASES.get(long, long) in _VALUE_FLAGS | _BOOL_FLAGS:
                        # pflag reads "-privileged" as -p -r -i...; say what was probably meant.
                        raise _fail(f"unsupported flag '{spelling}' in '{token}' (did you mean '{long}'?)")
                    raise _unsupported(spelling, canonical)
                if cluster:
                    yield spelling, canonical, cluster[1:] if cluster.startswith("=") else cluster
                elif i < len(tokens):
                    yield spelling, canonical, tokens[i]
                    i += 1
                else:
                    raise _fail(f"'{spelling}' needs a value")
                break
        else:
            # An image, a command or a stray `;`: only flags belong in this string.
            raise _fail(f"unexpected argument {token!r}: only docker run flags are allowed")


# --------------------------------------------------------------------------- values

_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False"})  # strconv.ParseBool, as pflag
# go-units RAMInBytes, which the docker CLI uses for --shm-size and --memory.
_SIZE = re.compile(r"^(\d+(?:\.\d+)?) ?([kKmMgGtTpP])?[iI]?[bB]?$")
# What docker-py's parse_bytes reads the same way; anything else we hand it as bytes.
_SDK_SIZE = re.compile(r"^\d+(?:\.\d+)?(?:[kKmMgG][bB]?|[bB])?$")
_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_ULIMITS = frozenset({
    "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc", "rss",
    "rtprio", "rttime", "sigpending", "stack",
})
_DEVICE_PERMS = re.compile(r"^(?!.*(.).*\1)[rwm]{1,3}$")
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]+$")
_VOLUME_OPTIONS = {
    "ro": "access", "rw": "access", "z": "selinux", "Z": "selinux", "nocopy": "nocopy",
    "shared": "propagation", "slave": "propagation", "private": "propagation",
    "rshared": "propagation", "rslave": "propagation", "rprivate": "propagation",
    "consistent": "consistency", "cached": "consistency", "delegated": "consistency",
}
_CAPABILITY = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_CGROUP_RULE = re.compile(r"^[acb] ([0-9]+|\*):([0-9]+|\*) [rwm]{1,3}$")  # the docker CLI's own check
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_WORD = re.compile(r"^\S+$")
_DECIMAL = re.compile(r"^(?:\d+(?:\.\d*)?|\.\d+)$")


def _bad(spelling: str, value: str, expected: str) -> DockerRunOptionsError:
    return _fail(f"'{spelling}' value {value!r} is not {expected}")


def _bool(spelling: str, value: str | None) -> bool:
    if value is None or value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _bad(spelling, value, "true or false")


def _size(spelling: str, value: str, *, allow_unlimited: bool = False) -> str:
    if allow_unlimited and value == "-1":
        return value
    match = _SIZE.fullmatch(value)
    if match is None:
        raise _bad(spelling, value, "a size such as 16G" + (" or -1" if allow_unlimited else ""))
    if _SDK_SIZE.fullmatch(value):
        return value
    # "16GiB", "1T" or "16 G" mean the same to docker but not to docker-py: pass bytes.
    number, unit = match.group(1), (match.group(2) or "").lower()
    return str(int(float(number) * 1024 ** _UNITS[unit]))


def _word(spelling: str, value: str, expected: str) -> str:
    if not _WORD.fullmatch(value):
        raise _bad(spelling, value, expected)
    return value


def _key_value(spelling: str, value: str, *, need_value: bool) -> tuple[str, str]:
    key, eq, rest = value.partition("=")
    if not key or (need_value and not eq):
        raise _bad(spelling, value, "KEY=VALUE" if need_value else "KEY[=VALUE]")
    return key, rest


def _absolute(spelling: str, value: str, path: str) -> str:
    normal = posixpath.normpath(path)
    if not normal.startswith("/"):
        raise _fail(f"'{spelling}' value {value!r}: {path!r} is not an absolute path")
    return normal


def _device(spelling: str, value: str) -> str:
    # docker's parseDevice: HOST[:CONTAINER][:PERMS], where a second part that
    # reads as permissions is the permissions.
    parts = value.split(":")
    if len(parts) > 3 or not all(parts):
        raise _bad(spelling, value, "HOST[:CONTAINER[:PERMISSIONS]]")
    host, container, perms = parts[0], parts[0], "rwm"
    if len(parts) == 2:
        if _DEVICE_PERMS.fullmatch(parts[1]):
            perms = parts[1]
        else:
            container = parts[1]
    elif len(parts) == 3:
        container, perms = parts[1], parts[2]
    if not _DEVICE_PERMS.fullmatch(perms):
        raise _fail(f"'{spelling}' value {value!r}: permissions {perms!r} are not a mix of r, w and m")
    for path in (host, container):
        if not path.startswith("/"):
            # CDI names (vendor.com/class=name) need the daemon's CDI support, which the SDK cannot ask for.
            raise _fail(f"'{spelling}' value {value!r}: {path!r} is not an absolute device path")
    return f"{host}:{container}:{perms}"


def _volume(spelling: str, value: str) -> tuple[str, VolumeBind]:
    parts = value.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        # An anonymous volume (a lone container path) has no host side to key the SDK's dict by.
        raise _bad(spelling, value, "HOST:CONTAINER[:OPTIONS]")
    source = parts[0]
    if source.startswith("/"):
        source = _absolute(spelling, value, source)
    elif not _VOLUME_NAME.fullmatch(source):
        # A relative path would be resolved against whatever directory the run started in.
        raise _fail(f"'{spelling}' value {value!r}: {source!r} is neither an absolute host path nor a volume name")
    container = _absolute(spelling, value, parts[1])
    mode = "rw"
    if len(parts) == 3:
        options = parts[2].split(",")
        seen: dict[str, str] = {}
        for option in options:
            kind = _VOLUME_OPTIONS.get(option)
            if kind is None or kind in seen:
                raise _fail(f"'{spelling}' value {value!r}: bad option {option!r} in {parts[2]!r}")
            seen[kind] = option
        mode = parts[2]
    return source, VolumeBind(container, mode)


def _ulimit(spelling: str, value: str) -> UlimitSpec:
    expected = "name=soft[:hard]"
    name, eq, limits = value.partition("=")
    if not eq or name.lower() not in _ULIMITS:
        raise _bad(spelling, value, expected)
    numbers = limits.split(":")
    if len(numbers) > 2:
        raise _bad(spelling, value, expected)
    parsed: list[int] = []
    for number in numbers:
        if number == "unlimited":
            parsed.append(-1)
        elif re.fullmatch(r"-?\d+", number) and int(number) >= -1:
            parsed.append(int(number))
        else:
            raise _bad(spelling, value, expected)
    soft, hard = parsed[0], parsed[-1]
    if hard != -1 and (soft == -1 or soft > hard):
        raise _fail(f"'{spelling}' value {value!r}: the soft limit is above the hard limit")
    return UlimitSpec(name.lower(), soft, hard)


def _cpus(spelling: str, value: str) -> int:
    if not _DECIMAL.fullmatch(value):
        raise _bad(spelling, value, "a number of CPUs")
    cpus = Decimal(value)
    if cpus <= 0:
        raise _bad(spelling, value, "a positive number of CPUs")
    nano = cpus * 1_000_000_000
    if nano != nano.to_integral_value():
        raise _fail(f"'{spelling}' value {value!r} is too precise: at most 9 decimals")
    return int(nano)


def _namespace(spelling: str, value: str, modes: frozenset[str]) -> str:
    kind, _, target = value.partition(":")
    if value in modes or (kind == "container" and target):
        return value
    raise _bad(spelling, value, " or ".join(sorted(modes)) + " or container:NAME")


def _security_opt(spelling: str, value: str) -> str:
    if value == "no-new-privileges":
        return value
    key, eq, option = value.partition("=")
    if not eq:
        # The CLI still reads the old key:value form; the daemon wants key=value.
        key, eq, option = value.partition(":")
    if not key or not eq or not option:
        raise _bad(spelling, value, "KEY=VALUE or no-new-privileges")
    if key == "seccomp" and option not in ("unconfined", "builtin"):
        # The CLI reads a profile file on the client and sends its contents: not our job.
        raise _fail(f"'{spelling}' value {value!r}: seccomp profile files are not supported; "
                    "use seccomp=unconfined or bake the profile into the daemon's defaults")
    return f"{key}={option}"


def _extra_host(spelling: str, value: str) -> tuple[str, str]:
    host, eq, address = value.partition("=")
    if not eq:
        host, eq, address = value.partition(":")
    if not eq or not host or ":" in host:
        raise _bad(spelling, value, "HOST:IP")
    if address != "host-gateway":
        if len(address) > 2 and address[0] == "[" and address[-1] == "]":
            address = address[1:-1]
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise _fail(f"'{spelling}' value {value!r}: {address!r} is not an IP address") from None
    return host, address


def _csv_record(spelling: str, value: str) -> list[str]:
    try:
        return next(csv.reader([value], strict=True), [])
    except csv.Error as exc:
        raise _fail(f"'{spelling}' value {value!r} is not one CSV record: {exc}") from None


def _gpus(spelling: str, value: str) -> GpuRequest:
    # The CLI reads the value as one CSV record, which is why a device list must
    # be quoted: --gpus '"device=0,1"'.
    fields = _csv_record(spelling, value)
    if not fields:
        raise _bad(spelling, value, "all, a count or device=ID[,ID...]")
    count: int | None = None
    devices: tuple[str, ...] = ()
    capabilities: tuple[tuple[str, ...], ...] = (("gpu",),)
    driver = ""
    options: tuple[tuple[str, str], ...] = ()
    seen: set[str] = set()

    def parse_count(text: str) -> int:
        if text == "all":
            return -1
        if text.isdigit():
            return int(text)
        raise _bad(spelling, value, "all, a count or device=ID[,ID...]")

    for item in fields:
        key, eq, rest = item.partition("=")
        name = key if eq else "count"
        if name in seen:
            raise _fail(f"'{spelling}' value {value!r}: {name!r} is given twice")
        seen.add(name)
        if not eq:
            count = parse_count(key)
        elif key == "count":
            count = parse_count(rest)
        elif key == "device":
            devices = tuple(rest.split(","))
            if not all(devices):
                raise _bad(spelling, value, "device=ID[,ID...]")
        elif key == "capabilities":
            capabilities = ((*rest.split(","), "gpu"),)
        elif key == "driver":
            driver = rest
        elif key == "options":
            pairs = _csv_record(spelling, rest)
            options = tuple(_key_value(spelling, pair, need_value=False) for pair in pairs)
        else:
            raise _fail(f"'{spelling}' value {value!r}: unknown key {key!r}")
    if count is not None and devices:
        raise _fail(f"'{spelling}' value {value!r} sets both a count and devices; "
                    "quote a device list: --gpus '\"device=0,1\"'")
    if count is None:
        count = 0 if devices else 1
    return GpuRequest(count, devices, capabilities, driver, options)


def _tmpfs(spelling: str, value: str) -> tuple[str, str]:
    path, _, options = value.partition(":")
    return _absolute(spelling, value, path), options


# --------------------------------------------------------------------------- parse


class _Builder:
    """Mutable accumulators; repeated scalar flags follow pflag: the last one wins."""

    def __init__(self, host_env: Mapping[str, str]) -> None:
        self.host_env = host_env
        self.lists: dict[str, list[Any]] = {}
        self.maps: dict[str, dict[str, Any]] = {}
        self.scalars: dict[str, Any] = {}

    def add(self, name: str, item: Any) -> None:
        items = self.lists.setdefault(name, [])
        if item not in items:
            items.append(item)

    def put(self, name: str, key: str, item: Any) -> None:
        self.maps.setdefault(name, {})[key] = item

    def handle(self, spelling: str, canonical: str, value: str | None) -> None:
        if canonical in _IGNORED:
            _bool(spelling, value)
            return
        if canonical == "--privileged":
            self.scalars["privileged"] = _bool(spelling, value)
            return
        assert value is not None  # only bool flags come bare out of _flags
        if value == "":
            raise _fail(f"'{spelling}' needs a value")
        _HANDLERS[canonical](self, spelling, value)

    def env(self, spelling: str, value: str) -> None:
        key, eq, rest = value.partition("=")
        if not key:
            raise _fail(f"'{spelling}' value has an empty variable name (the value is not shown: it may be a secret)")
        if eq:
            self.put("environment", key, rest)
        elif key in self.host_env:
            self.put("environment", key, self.host_env[key])
        # A bare KEY the host does not have is left out, as docker does.

    def volume(self, spelling: str, value: str) -> None:
        source, bind = _volume(spelling, value)
        volumes = self.maps.setdefault("volumes", {})
        previous = volumes.get(source)
        if previous is not None and previous != bind:
            raise _fail(f"'{spelling}' value {value!r}: {source!r} is already mounted at {previous.bind!r}; "
                        "the Docker SDK takes one mount per host path")
        if any(other.bind == bind.bind for host, other in volumes.items() if host != source):
            raise _fail(f"'{spelling}' value {value!r}: {bind.bind!r} is already a mount point")
        volumes[source] = bind

    def network(self, spelling: str, value: str) -> None:
        _word(spelling, value, "a network name")
        previous = self.scalars.get("network_mode")
        if previous is not None and previous != value:
            # docker would join both networks; the SDK's network_mode holds one.
            raise _fail(f"'{spelling}' value {value!r}: only one network is supported, {previous!r} is already set")
        self.scalars["network_mode"] = value

    def build(self) -> RunOptions:
        frozen: dict[str, Any] = dict(self.scalars)
        frozen.update({name: tuple(items) for name, items in self.lists.items()})
        frozen.update({name: MappingProxyType(items) for name, items in self.maps.items()})
        if "ulimits" in frozen:
            # Keyed by name while parsing so that a later --ulimit for the same resource wins.
            frozen["ulimits"] = tuple(frozen["ulimits"].values())
        return RunOptions(**frozen)


def _scalar(name: str, check: Callable[[str, str], Any]) -> Callable[[_Builder, str, str], None]:
    def handler(builder: _Builder, spelling: str, value: str) -> None:
        builder.scalars[name] = check(spelling, value)
    return handler


def _listed(name: str, check: Callable[[str, str], Any]) -> Callable[[_Builder, str, str], None]:
    def handler(builder: _Builder, spelling: str, value: str) -> None:
        builder.add(name, check(spelling, value))
    return handler


def _mapped(name: str, check: Callable[[str, str], tuple[str, Any]]) -> Callable[[_Builder, str, str], None]:
    def handler(builder: _Builder, spelling: str, value: str) -> None:
        builder.put(name, *check(spelling, value))
    return handler


def _capability(spelling: str, value: str) -> str:
    if not _CAPABILITY.fullmatch(value):
        raise _bad(spelling, value, "a capability name such as SYS_PTRACE")
    return value


def _hostname(spelling: str, value: str) -> str:
    if not _HOSTNAME.fullmatch(value):
        raise _bad(spelling, value, "a host name")
    return value


def _cgroup_rule(spelling: str, value: str) -> str:
    if not _CGROUP_RULE.fullmatch(value):
        raise _bad(spelling, value, "a rule such as 'c 226:* rmw'")
    return value


def _group(spelling: str, value: str) -> str:
    if ":" in value:
        raise _bad(spelling, value, "a group name or id")
    return _word(spelling, value, "a group name or id")


def _ulimit_entry(spelling: str, value: str) -> tuple[str, UlimitSpec]:
    spec = _ulimit(spelling, value)
    return spec.name, spec


_IPC_MODES = frozenset({"none", "private", "shareable", "host"})
_PID_MODES = frozenset({"host"})

_HANDLERS: dict[str, Callable[[_Builder, str, str], None]] = {
    "--device": _listed("devices", _device),
    "--env": _Builder.env,
    "--volume": _Builder.volume,
    "--shm-size": _scalar("shm_size", _size),
    "--cap-add": _listed("cap_add", _capability),
    "--cap-drop": _listed("cap_drop", _capability),
    "--security-opt": _listed("security_opt", _security_opt),
    "--ulimit": _mapped("ulimits", _ulimit_entry),
    "--group-add": _listed("group_add", _group),
    "--ipc": _scalar("ipc_mode", lambda s, v: _namespace(s, v, _IPC_MODES)),
    "--network": _Builder.network,
    "--cpus": _scalar("nano_cpus", _cpus),
    "--memory": _scalar("mem_limit", _size),
    "--memory-swap": _scalar("memswap_limit", lambda s, v: _size(s, v, allow_unlimited=True)),
    "--user": _scalar("user", lambda s, v: _word(s, v, "USER[:GROUP]")),
    "--pid": _scalar("pid_mode", lambda s, v: _namespace(s, v, _PID_MODES)),
    "--hostname": _scalar("hostname", _hostname),
    "--add-host": _mapped("extra_hosts", _extra_host),
    "--gpus": _listed("device_requests", _gpus),
    "--tmpfs": _mapped("tmpfs", _tmpfs),
    "--label": _mapped("labels", lambda s, v: _key_value(s, v, need_value=False)),
    "--sysctl": _mapped("sysctls", lambda s, v: _key_value(s, v, need_value=True)),
    "--device-cgroup-rule": _listed("device_cgroup_rules", _cgroup_rule),
}


def parse(text: str, host_env: Mapping[str, str]) -> RunOptions:
    """Parse ``additional_docker_run_options``; ``host_env`` fills a bare ``-e KEY`` (pass ``os.environ``).

    Raises :class:`DockerRunOptionsError` naming the flag for anything unsupported or malformed.
    """
    if not isinstance(text, str):
        raise _fail(f"must be a string, not {type(text).__name__}")
    builder = _Builder(host_env)
    for spelling, canonical, value in _flags(_tokens(text)):
        builder.handle(spelling, canonical, value)
    return builder.build()


# --------------------------------------------------------------------------- merge


def _dedup(items: Sequence[Any]) -> list[Any]:
    # By equality, not hash: SDK types such as Ulimit and DeviceRequest are dicts.
    out: list[Any] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def merge_into(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``extra`` merged in; ``base`` itself is left unchanged.

    Lists are appended and deduplicated in order, dicts are merged with ``extra``
    winning, anything else is replaced by ``extra``.
    """
    merged = dict(base)
    for key, value in extra.items():
        current = merged.get(key)
        if current is None:
            # Copies, so that the caller's dicts and lists are never shared with the result.
            if isinstance(value, list | tuple):
                merged[key] = list(value)
            elif isinstance(value, Mapping):
                merged[key] = dict(value)
            else:
                merged[key] = value
        elif isinstance(current, list | tuple) and isinstance(value, list | tuple):
            merged[key] = _dedup([*current, *value])
        elif isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = {**current, **value}
        elif isinstance(current, list | tuple | Mapping) or isinstance(value, list | tuple | Mapping):
            # e.g. volumes as a list of "host:ctr" strings against a dict: merging would guess.
            raise TypeError(f"cannot merge {key!r}: {type(current).__name__} and {type(value).__name__}")
        else:
            merged[key] = value
    return merged


# --------------------------------------------------------------------------- describe

def _secret(key: str) -> bool:
    return masking.looks_secret(key)


def _gpu_text(request: GpuRequest) -> str:
    parts = []
    if request.device_ids:
        parts.append("device=" + ",".join(request.device_ids))
    else:
        parts.append("all" if request.count == -1 else str(request.count))
    if request.capabilities != (("gpu",),):
        parts.append("capabilities=" + ";".join(",".join(c) for c in request.capabilities))
    if request.driver:
        parts.append(f"driver={request.driver}")
    if request.options:
        parts.append("options=" + ",".join(f"{k}={v}" for k, v in request.options))
    return " ".join(parts)


def _limit(value: int) -> str:
    return "unlimited" if value == -1 else str(value)


def describe(opts: RunOptions) -> list[str]:
    """Short lines for a plan printout, one per flag given; secret-looking env values show as ``***``."""

    def joined(items: Sequence[str] | Mapping[str, str], sep: str = "=") -> str:
        if isinstance(items, Mapping):
            return ", ".join(f"{k}{sep}{v}" if v else k for k, v in items.items())
        return ", ".join(items)

    lines: list[str] = []
    if opts.privileged is not None:
        lines.append(f"privileged: {'yes' if opts.privileged else 'no'}")
    if opts.devices:
        lines.append(f"devices: {joined(opts.devices)}")
    if opts.device_requests:
        lines.append("gpus: " + "; ".join(_gpu_text(r) for r in opts.device_requests))
    if opts.device_cgroup_rules:
        lines.append(f"device cgroup rules: {joined(opts.device_cgroup_rules)}")
    if opts.environment:
        shown = {k: ("***" if _secret(k) else v) for k, v in opts.environment.items()}
        lines.append("env: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    if opts.volumes:
        lines.append("volumes: " + ", ".join(f"{h} -> {v.bind} ({v.mode})" for h, v in opts.volumes.items()))
    if opts.tmpfs:
        lines.append(f"tmpfs: {joined(opts.tmpfs, ':')}")
    for label, value in (("shm size", opts.shm_size), ("memory", opts.mem_limit),
                         ("memory+swap", opts.memswap_limit)):
        if value is not None:
            lines.append(f"{label}: {value}")
    if opts.nano_cpus is not None:
        lines.append(f"cpus: {Decimal(opts.nano_cpus).scaleb(-9).normalize():f}")
    for label, items in (("cap add", opts.cap_add), ("cap drop", opts.cap_drop),
                         ("security opt", opts.security_opt), ("group add", opts.group_add)):
        if items:
            lines.append(f"{label}: {joined(items)}")
    if opts.ulimits:
        lines.append("ulimits: " + ", ".join(f"{u.name}={_limit(u.soft)}:{_limit(u.hard)}" for u in opts.ulimits))
    for label, value in (("user", opts.user), ("ipc", opts.ipc_mode), ("network", opts.network_mode),
                         ("pid", opts.pid_mode), ("hostname", opts.hostname)):
        if value is not None:
            lines.append(f"{label}: {value}")
    if opts.extra_hosts:
        lines.append(f"add hosts: {joined(opts.extra_hosts, ':')}")
    if opts.labels:
        lines.append(f"labels: {joined(opts.labels)}")
    if opts.sysctls:
        lines.append(f"sysctls: {joined(opts.sysctls)}")
    return lines


_ENV_ASSIGN = re.compile(r"^(?P<head>(?:-e|--env)=?)?(?P<key>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$", re.S)


def masked(text: str) -> str:
    """The options as written, for perf.csv and logs, with the values of secret-looking
    variables (``-e HF_TOKEN=...``) replaced by ``***`` (madengine writes them as given)."""
    try:
        tokens = shlex.split(text)
    except ValueError:
        return "(unparsable options)"
    out: list[str] = []
    for token in tokens:
        m = _ENV_ASSIGN.match(token)
        if m and _secret(m["key"]):
            token = f"{m['head'] or ''}{m['key']}=***"
        out.append(token)
    return shlex.join(out)
