"""A TCP barrier between the pytest processes of a multi-node run, before each model starts.

torchrun waits up to 10 minutes (or the model's timeout) for nodes that never come; this
barrier makes such a node fail within ``rendezvous_timeout`` with a message naming who is
missing. Node 0 listens on ``rendezvous_port`` (MASTER_PORT + 1 by default); the others
connect with retries. One TCP connection per node and model carries, as JSON lines:

====================  ==========================================================
peer -> node 0        ``{"hello": token, "rank": r, "model": name}``, with ``"failed": why``
                      from a node that failed before the meeting (its image build, its
                      run folder): node 0 then aborts every node, latecomers included
node 0 -> peer        ``{"go": offer}`` once every node joined; ``{"retry": why}``
                      for a token of another model (node 0 is behind or ahead);
                      ``{"error": why}`` (duplicate or bad rank); ``{"abort": why}``
peer -> node 0        ``{"ready": true}`` or ``{"ready": false, "problem": why}``
                      (the peer's checks of the offer, e.g. the shared mirror folder)
node 0 -> peer        ``{"start": true}`` or ``{"abort": why}``
... the model runs on every node; the connection stays open ...
peer -> node 0        ``{"result": payload}`` (its outcome and per-rank values), then
                      it hangs up; node 0 reads it when its own run has ended
====================  ==========================================================

The token is a hash of the model name and NNODES, so nodes that run different selections
do not start different models together. It coordinates; it does not authenticate.
"""

from __future__ import annotations

import errno
import hashlib
import json
import select
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_madengine.errors import ExecutorError

POLL_S = 0.2
RETRY_S = 0.5
CONNECT_TIMEOUT_S = 2.0
MAX_MESSAGE = 1 << 20
LATE_REPLY_S = 10.0  # at least this long for replies once everyone joined


class RendezvousFailed(ExecutorError):
    """The nodes could not start a model together; the message is the item's reason."""


def token_for(model: str, nnodes: int) -> str:
    return hashlib.sha256(f"{model}\0{nnodes}".encode()).hexdigest()[:16]


def _ranks(ranks: Any) -> str:
    return "[" + ", ".join(str(r) for r in sorted(ranks)) + "]"


class _Conn:
    """A socket speaking newline-delimited JSON, read against deadlines."""

    def __init__(self, sock: socket.socket, peer: str = "") -> None:
        self.sock = sock
        self.peer = peer
        self.buf = b""
        self.closed = False
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except OSError:
            pass

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, obj: Mapping[str, Any]) -> bool:
        data = (json.dumps(obj) + "\n").encode()
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(CONNECT_TIMEOUT_S * 5)
            self.sock.sendall(data)
            return True
        except OSError:
            return False
        finally:
            try:
                self.sock.setblocking(False)
            except OSError:
                pass

    def _pop(self) -> dict[str, Any] | None:
        line, sep, rest = self.buf.partition(b"\n")
        if not sep:
            if len(self.buf) > MAX_MESSAGE:
                raise ValueError("message too long")
            return None
        self.buf = rest
        msg = json.loads(line.decode())
        if not isinstance(msg, dict):
            raise ValueError("not a JSON object")
        return msg

    def feed(self) -> bool:
        """Read what is there; False when the other side closed."""
        try:
            chunk = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not chunk:
            return False
        self.buf += chunk
        return True

    def recv(self, deadline: float, cancel: Any = None) -> dict[str, Any] | None:
        """The next message; None on timeout or when the connection ends (``closed`` says which)."""
        self.closed = False
        while True:
            try:
                msg = self._pop()
            except ValueError:
                self.closed = True
                return None
            if msg is not None:
                return msg
            left = deadline - time.monotonic()
            if left <= 0 or (cancel is not None and cancel):
                return None
            ready, _, _ = select.select([self.sock], [], [], min(POLL_S, left))
            if ready and not self.feed():
                self.closed = True
                return None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass
class Link:
    """The nodes of one model, joined. Node 0 holds a connection per peer; a peer holds one
    to node 0. After the run, peers ``report`` and node 0 ``collect``s."""

    rank: int
    where: str
    offer: dict[str, Any] = field(default_factory=dict)
    peers: dict[int, _Conn] = field(default_factory=dict)
    to_root: _Conn | None = None

    def report(self, payload: Mapping[str, Any]) -> str:
        """Peer: send this node's result to node 0 (which reads it once its own run ends) and
        hang up; a warning, "" when sent."""
        conn, self.to_root = self.to_root, None
        if conn is None:
            return ""
        try:
            if not conn.send({"result": dict(payload)}):
                return f"could not report this node's result to node 0 at {self.where} (connection lost)"
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return ""
        finally:
            conn.close()

    def collect(self, timeout: float, cancel: Any = None) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
        """Node 0: every peer's result, waiting up to ``timeout`` s for those still running.
        Returns (results by rank, why each missing rank did not report)."""
        results: dict[int, dict[str, Any]] = {}
        missing: dict[int, str] = {}
        deadline = time.monotonic() + timeout
        pending = dict(self.peers)
        self.peers = {}
        for conn in pending.values():
            conn.closed = False
        while pending:
            for rank, conn in list(pending.items()):
                try:
                    msg = conn._pop()
                except ValueError:
                    msg = None
                    conn.closed = True
                if msg is not None and "result" in msg:
                    results[rank] = msg["result"] if isinstance(msg["result"], dict) else {}
                    conn.close()
                    del pending[rank]
                elif conn.closed:
                    missing[rank] = "its connection ended before it reported (node stopped?)"
                    conn.close()
                    del pending[rank]
            if not pending:
                break
            left = deadline - time.monotonic()
            if left <= 0 or (cancel is not None and cancel):
                for rank, conn in pending.items():
                    missing[rank] = f"it did not report within {timeout:g} s after this node finished"
                    conn.close()
                break
            ready, _, _ = select.select(list(pending.values()), [], [], min(POLL_S, left))
            for conn in ready:
                if not conn.feed():
                    conn.closed = True
        return results, missing

    def close(self) -> None:
        for conn in self.peers.values():
            conn.close()
        self.peers = {}
        if self.to_root is not None:
            self.to_root.close()
            self.to_root = None


Check = Callable[[Mapping[str, Any]], str | None]


def _listen(port: int) -> socket.socket:
    try:
        if socket.has_dualstack_ipv6():
            return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=64)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise
    return socket.create_server(("", port), family=socket.AF_INET, backlog=64)


def lead(*, port: int, where: str, nnodes: int, token: str, model: str, timeout: float,
         offer: Mapping[str, Any] | None = None, cancel: Any = None, failed: str = "") -> Link:
    """Node 0: wait for NNODES-1 peers, hand them ``offer``, collect their checks, start.
    ``failed``: node 0 itself failed before the meeting; every peer is told at once."""
    start = time.monotonic()
    deadline = start + timeout
    try:
        server = _listen(port)
    except OSError as exc:
        raise RendezvousFailed(f"rendezvous: cannot listen on port {port} ({exc.strerror or exc}); another "
                               "pytest on this node (multi-node runs cannot use -n), or set 'rendezvous_port'"
                               ) from None
    server.setblocking(False)
    joined: dict[int, _Conn] = {}
    hello_wait: list[tuple[_Conn, float]] = []
    want = set(range(1, nnodes))
    doomed = f"node 0 failed before the meeting: {failed}" if failed else ""
    told: set[int] = set()
    try:
        while set(joined) != want:
            if doomed and told | set(joined) >= want:
                break  # every peer knows: no need to wait out the timeout
            left = deadline - time.monotonic()
            if cancel is not None and cancel:
                raise RendezvousFailed("rendezvous interrupted")
            if left <= 0:
                missing = want - set(joined)
                raise RendezvousFailed(f"rendezvous timed out after {timeout:g} s at {where}; "
                                       f"ranks that did not join: {_ranks(missing)}")
            waitables: list[Any] = [server, *(c for c, _ in hello_wait), *joined.values()]
            ready, _, _ = select.select(waitables, [], [], min(POLL_S, left))
            for rank, conn in list(joined.items()):
                if conn in ready and not conn.feed():  # that node went away: wait for it again
                    joined.pop(rank).close()
            if server in ready:
                try:
                    sock, addr = server.accept()
                except OSError:
                    sock = None
                if sock is not None:
                    hello_wait.append((_Conn(sock, str(addr[0])), time.monotonic() + CONNECT_TIMEOUT_S * 5))
            still: list[tuple[_Conn, float]] = []
            for conn, until in hello_wait:
                if conn in ready and not conn.feed():
                    conn.close()
                    continue
                try:
                    msg = conn._pop()
                except ValueError:
                    conn.close()
                    continue
                if msg is None:
                    if time.monotonic() < until:
                        still.append((conn, until))
                    else:
                        conn.close()
                    continue
                again = msg.get("rank")
                if isinstance(again, int) and again in joined and not joined[again].feed():
                    joined.pop(again).close()  # that node went away and came back: keep the new one
                verdict = _admit(msg, token=token, model=model, nnodes=nnodes, joined=joined, conn=conn)
                if verdict is not None:
                    conn.send(verdict)
                    conn.close()
                    continue
                rank = int(msg["rank"])
                if msg.get("failed") and not doomed:
                    doomed = f"node {rank} failed before the meeting: {msg['failed']}"
                    for other in joined.values():  # the ones already waiting learn it now
                        other.send({"abort": doomed})
                        other.close()
                    told.update(joined)
                    joined.clear()
                if doomed:
                    conn.send({"abort": doomed})
                    conn.close()
                    told.add(rank)
                    continue
                joined[rank] = conn
            hello_wait = still
    except BaseException as exc:
        for conn in joined.values():
            conn.send({"abort": f"node 0: {exc}"})
            conn.close()
        for conn, _ in hello_wait:
            conn.close()
        raise
    finally:
        server.close()
    for conn, _ in hello_wait:
        conn.close()
    if doomed:
        raise RendezvousFailed(f"rendezvous at {where} aborted: {doomed}")
    # Everyone is here: hand out the offer, gather the checks, then start or abort together.
    offer = dict(offer or {})
    problems: dict[int, str] = {}
    for rank, conn in joined.items():
        if not conn.send({"go": offer}):
            problems[rank] = "left the rendezvous"
    reply_by = max(deadline, time.monotonic() + LATE_REPLY_S)
    for rank, conn in sorted(joined.items()):
        if rank in problems:
            continue
        reply = conn.recv(reply_by, cancel)
        if reply is None:
            problems[rank] = "left the rendezvous" if conn.closed else "did not answer"
        elif not reply.get("ready"):
            problems[rank] = str(reply.get("problem") or "not ready")
    if cancel is not None and cancel:
        problems.setdefault(0, "interrupted")
    if problems:
        why = "; ".join(f"node {r}: {p}" for r, p in sorted(problems.items()))
        for conn in joined.values():
            conn.send({"abort": why})
            conn.close()
        raise RendezvousFailed(f"rendezvous at {where} aborted: {why}")
    for conn in joined.values():
        conn.send({"start": True})
    return Link(rank=0, where=where, offer=offer, peers=joined)


def _admit(msg: Mapping[str, Any], *, token: str, model: str, nnodes: int, joined: Mapping[int, _Conn],
           conn: _Conn) -> dict[str, str] | None:
    """None to accept a hello; else the answer that turns it away."""
    if msg.get("hello") != token:
        return {"retry": f"node 0 is at model '{model}' (NNODES {nnodes}), this node at "
                         f"'{msg.get('model')}'"}
    try:
        rank = int(msg["rank"])
    except (KeyError, TypeError, ValueError):
        return {"error": f"bad rank {msg.get('rank')!r}"}
    if not 0 < rank < nnodes:
        return {"error": f"NODE_RANK {rank} is out of range for NNODES {nnodes} (node 0 is rank 0)"}
    if rank in joined:
        return {"error": f"NODE_RANK {rank} already joined from {joined[rank].peer}; "
                         "two nodes have the same NODE_RANK"}
    return None


def follow(*, addr: str, port: int, where: str, rank: int, token: str, model: str, timeout: float,
           check: Check | None = None, cancel: Any = None, failed: str = "") -> Link:
    """Node ``rank`` > 0: join node 0, run ``check`` on its offer, wait for the start.
    ``failed``: this node failed before the meeting; it only tells node 0, which aborts all."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        if cancel is not None and cancel:
            raise RendezvousFailed("rendezvous interrupted")
        left = deadline - time.monotonic()
        if left <= 0:
            detail = f" (last: {last})" if last else ""
            raise RendezvousFailed(f"rendezvous timed out after {timeout:g} s at {where}; "
                                   f"ranks that did not join: [0]{detail}")
        try:
            sock = socket.create_connection((addr, port), timeout=min(CONNECT_TIMEOUT_S, left))
        except OSError as exc:
            last = f"{addr}:{port}: {exc.strerror or exc}"
            _sleep(min(RETRY_S, max(0.0, deadline - time.monotonic())), cancel)
            continue
        conn = _Conn(sock, f"{addr}:{port}")
        outcome = _handshake(conn, rank=rank, token=token, model=model, deadline=deadline, where=where,
                             check=check, cancel=cancel, timeout=timeout, failed=failed)
        if isinstance(outcome, Link):
            return outcome
        conn.close()
        last = outcome
        _sleep(min(RETRY_S, max(0.0, deadline - time.monotonic())), cancel)


def _handshake(conn: _Conn, *, rank: int, token: str, model: str, deadline: float, where: str,
               check: Check | None, cancel: Any, timeout: float, failed: str = "") -> Link | str:
    """A Link, or why to try again; raises for answers that end the rendezvous."""
    hello: dict[str, Any] = {"hello": token, "rank": rank, "model": model}
    if failed:
        hello["failed"] = failed
    if not conn.send(hello):
        return "connection lost"
    reply = conn.recv(deadline, cancel)
    if reply is None:
        if conn.closed or (cancel is not None and cancel):
            return "node 0 closed the connection"
        conn.close()
        raise RendezvousFailed(f"rendezvous timed out after {timeout:g} s at {where}; node 0 answered, "
                               "other ranks did not join")
    if "retry" in reply:
        return str(reply["retry"])
    if "error" in reply:
        conn.close()
        raise RendezvousFailed(f"rendezvous at {where}: node 0 turned this node away: {reply['error']}")
    if "abort" in reply:
        conn.close()
        raise RendezvousFailed(f"rendezvous at {where} aborted by {reply['abort']}")
    offer = reply.get("go")
    if not isinstance(offer, dict):
        return f"unexpected answer {reply!r}"
    problem = check(offer) if check is not None else None
    conn.send({"ready": problem is None, "problem": problem or ""})
    final = conn.recv(max(deadline, time.monotonic() + LATE_REPLY_S) + LATE_REPLY_S, cancel)
    if problem is not None:
        conn.close()
        raise RendezvousFailed(problem)
    if final is None or "abort" in final or not final.get("start"):
        conn.close()
        why = final.get("abort") if final else ("node 0 left" if conn.closed else "no start")
        raise RendezvousFailed(f"rendezvous at {where} aborted: {why}")
    return Link(rank=rank, where=where, offer=offer, to_root=conn)


def _sleep(seconds: float, cancel: Any) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cancel is not None and cancel:
            return
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))
