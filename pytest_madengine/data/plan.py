"""How one provider serves one dataname, as data: the host commands to run (argv; secrets
only in ``env``/``stdin``, never in argv), the folder the model reads, where it is mounted."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pytest_madengine.data.config import DEFAULT_HOME, Source


class Unusable(Exception):
    """This provider cannot serve this dataname; the reason (no secrets in it)."""


@dataclass(frozen=True)
class Step:
    argv: tuple[str, ...]
    timeout: float
    cwd: str = ""
    only_if_empty: bool = False  # run only when the data folder is still empty (S3: a single object)

    def render(self) -> str:
        return shlex.join(self.argv) + (f"  (in {self.cwd})" if self.cwd else "") + \
            ("  (only if nothing was copied)" if self.only_if_empty else "")


@dataclass(frozen=True)
class Fetch:
    source: Source
    host_dir: Path  # what the model reads: MAD_DATAHOME on the host, the mount's source in a container
    home: str  # the container path
    readonly: bool
    steps: tuple[Step, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)  # the steps' extra env, shown
    secret_env: Mapping[str, str] = field(default_factory=dict, repr=False)  # never shown
    stdin: str = field(default="", repr=False)  # the first step's stdin (sshfs password_stdin)
    mounted: bool = False  # a FUSE mount at host_dir: unmounted after the run
    transient: bool = False  # host_dir is this run's own copy: removed after the run
    sized: bool = False  # perf.csv's data_size measured after the steps
    via: str = ""  # e.g. the NAS node used, for the log

    def render(self) -> str:
        head = (f"data '{self.source.dataname}' from {self.source.provider}"
                + (f" ({self.via})" if self.via else "")
                + f": {self.host_dir} (in a container at {self.home}, {'read-only' if self.readonly else 'read-write'})")
        names = [f"{k}={v}" for k, v in sorted(self.env.items())] + [f"{k}=***" for k in sorted(self.secret_env)]
        lines = [head] + [f"    $ {s.render()}" for s in self.steps]
        if names and self.steps:
            lines.append(f"    with {' '.join(names)}")
        return "\n".join(lines)


def default_home(source: Source, index: int) -> str:
    return source.home or f"{DEFAULT_HOME}_{index}"


def data_folder(source: Source, scratch: Path) -> tuple[Path, bool]:
    """(folder the data lands in, whether it is transient): ``<mirrorlocal>/<dataname>`` (kept),
    else this run's ``<work dir>/.mad_data/<item>/<dataname>`` (removed after the run)."""
    if source.mirrorlocal:
        mirror = Path(source.mirrorlocal)
        if not mirror.is_dir():
            raise Unusable(f"mirrorlocal {mirror} is not an existing folder (it is never created here)")
        return mirror / source.dataname, False
    return scratch / source.dataname, True
