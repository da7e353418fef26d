"""The ``nas`` provider: over ssh from the first NAS node (``NAS_NODES``) that answers.
With ``mirrorlocal``: rsync into ``<mirror>/<dataname>``; without: an sshfs mount in the run
folder, unmounted after the run. A password goes to ``sshpass -e`` / sshfs on stdin, never argv."""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

from pytest_madengine.data.config import Source
from pytest_madengine.data.credentials import Credentials, NasNode
from pytest_madengine.data.plan import Fetch, Step, Unusable, data_folder, default_home

RSYNC_TIMEOUT_S = 2400.0  # madengine's
MOUNT_TIMEOUT_S = 120.0  # madengine's
Probe = Callable[[str, int], str | None]  # (host, port) -> why it does not answer, None when it does


def ssh_options(node: NasNode, known_hosts: Path) -> list[str]:
    # Trust on first use, as madengine's ssh-keyscan, but in a file of our own (not ~/.ssh).
    opts = ["-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "ConnectTimeout=10"]
    if not node.password:
        opts += ["-o", "BatchMode=yes"]
    else:
        opts += ["-o", "NumberOfPasswordPrompts=1", "-o", "PubkeyAuthentication=no"]
    return opts


def choose(creds: Credentials, probe: Probe) -> NasNode:
    if not creds.nas:
        raise Unusable("no NAS node: NAS_NODES is set neither in the environment nor in credential.json")
    why: list[str] = []
    for node in creds.nas:
        problem = probe(node.host, node.port)
        if problem is None:
            return node
        why.append(f"{node.name} {node.host}:{node.port} {problem}")
    raise Unusable("no NAS node answers (" + "; ".join(why) + ")")


def plan(source: Source, index: int, creds: Credentials, scratch: Path, known_hosts: Path,
         probe: Probe, which: Callable[[str], str | None] = shutil.which) -> Fetch:
    node = choose(creds, probe)
    folder, transient = data_folder(source, scratch)
    remote = f"{node.username}@{node.host}:{source.path}"
    secret = {"SSHPASS": node.password} if node.password else {}
    via = f"NAS {node.name} {node.host}:{node.port}"
    home = default_home(source, index)
    if source.mirrorlocal:
        tools = ["rsync", "ssh"] + (["sshpass"] if node.password else [])
        missing = [t for t in tools if which(t) is None]
        if missing:
            raise Unusable(f"{', '.join(missing)} not found on this host (apt-get install {' '.join(missing)})")
        ssh = shlex.join(["ssh", "-p", str(node.port), *ssh_options(node, known_hosts)])
        argv = (*(("sshpass", "-e") if node.password else ()), "rsync", "-a", "-e", ssh,
                remote.rstrip("/") + "/", str(folder) + "/")
        return Fetch(source=source, host_dir=folder, home=home, readonly=False,
                     steps=(Step(argv=argv, timeout=RSYNC_TIMEOUT_S),), secret_env=secret,
                     transient=transient, sized=True, via=via)
    missing = [t for t in ("sshfs", "fusermount") if which(t) is None]
    if missing:
        raise Unusable(f"without mirrorlocal the NAS is mounted with sshfs, and {', '.join(missing)} is not "
                       "found on this host (apt-get install sshfs; or set mirrorlocal / --mad-force-mirror-local "
                       "to copy with rsync)")
    opts = [f"port={node.port}", "StrictHostKeyChecking=accept-new", f"UserKnownHostsFile={known_hosts}",
            "ConnectTimeout=10"]
    opts += ["password_stdin", "NumberOfPasswordPrompts=1", "PubkeyAuthentication=no"] if node.password \
        else ["BatchMode=yes"]
    argv = ("sshfs", remote, str(folder), "-o", ",".join(opts))
    return Fetch(source=source, host_dir=folder, home=home, readonly=False,
                 steps=(Step(argv=argv, timeout=MOUNT_TIMEOUT_S),), stdin=node.password + "\n" if node.password else "",
                 mounted=True, transient=True, via=via)
