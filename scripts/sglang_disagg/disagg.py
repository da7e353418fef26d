"""One task of the stand-in disaggregated prefill/decode job (see run.sh).

Ranks 0..PREFILL_NODES-1 are prefill workers, the others decode workers. Rank 0 also runs
the coordinator (on the job's first node, DISAGG_MASTER): every rank registers with it over
TCP; decode workers open a server and tell it where; prefill workers get the decode
endpoints, send each request's "KV cache" (random bytes) to a decode worker, which checks
it (sha256) and "generates" tokens derived from it; prefill workers verify the checksum,
report their counts, and rank 0 prints the totals and a `performance:` line. Any lost,
corrupted or missing exchange makes the job fail. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import sys
import threading
import time

RANK = int(os.environ["SLURM_PROCID"])
WORLD = int(os.environ["SLURM_NTASKS"])
PREFILL = int(os.environ["PREFILL_NODES"])
DECODE = int(os.environ["DECODE_NODES"])
MODEL = os.environ.get("MODEL_NAME", "model")
REQUESTS = int(os.environ.get("DISAGG_REQUESTS", "16"))
KV_BYTES = int(os.environ.get("DISAGG_KV_BYTES", str(1 << 20)))
NEW_TOKENS = 32
MASTER = os.environ.get("DISAGG_MASTER") or os.environ.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1")
PORT = 30000 + int(os.environ["SLURM_JOB_ID"]) % 10000
TIMEOUT = 120.0
ROLE = "prefill" if RANK < PREFILL else "decode"


def log(text: str) -> None:
    print(f"[{ROLE} rank {RANK}] {text}", flush=True)


def send(sock: socket.socket, obj: dict, payload: bytes = b"") -> None:
    head = json.dumps({**obj, "payload": len(payload)}).encode()
    sock.sendall(struct.pack("!I", len(head)) + head + payload)


def _exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        buf += chunk
    return bytes(buf)


def recv(sock: socket.socket) -> tuple[dict, bytes]:
    (n,) = struct.unpack("!I", _exact(sock, 4))
    obj = json.loads(_exact(sock, n))
    return obj, _exact(sock, obj["payload"]) if obj["payload"] else b""


def tokens_for(digest: str) -> list[int]:
    return [int(digest[(2 * i) % 60:(2 * i) % 60 + 4], 16) % 32000 for i in range(NEW_TOKENS)]


def connect(host: str, port: int) -> socket.socket:
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def coordinator(server: socket.socket, result: dict) -> None:
    """Rank 0's thread: registration, endpoints, stats, the verdict."""
    peers: dict[int, tuple[socket.socket, dict]] = {}
    while len(peers) < WORLD:
        conn, _ = server.accept()
        conn.settimeout(TIMEOUT)
        hello, _ = recv(conn)
        peers[hello["rank"]] = (conn, hello)
    decoders = [[peers[r][1]["host"], peers[r][1]["port"]] for r in range(PREFILL, WORLD)]
    for r in range(PREFILL):
        send(peers[r][0], {"decoders": decoders})
    prefill_stats = [recv(peers[r][0])[0] for r in range(PREFILL)]
    for r in range(PREFILL, WORLD):
        send(peers[r][0], {"stop": True})
    decode_stats = [recv(peers[r][0])[0] for r in range(PREFILL, WORLD)]
    result.update(prefill=prefill_stats, decode=decode_stats)


def decode_server(server: socket.socket, served: list[int], stop: threading.Event) -> None:
    lock = threading.Lock()

    def handle(conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    req, kv = recv(conn)
                except ConnectionError:
                    return
                digest = hashlib.sha256(kv).hexdigest()
                # Counted before the reply: once a prefill rank has its answer, the stop that
                # follows must find the request already counted (and threads count under a lock).
                with lock:
                    served[0] += 1
                    served[1] += len(kv)
                send(conn, {"id": req["id"], "sha256": digest, "tokens": tokens_for(digest)})

    server.settimeout(0.5)
    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        conn.settimeout(TIMEOUT)
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def main() -> int:
    result: dict = {}
    coord_thread = None
    if RANK == 0:
        server = socket.create_server(("0.0.0.0", PORT), reuse_port=False)
        server.settimeout(TIMEOUT)
        coord_thread = threading.Thread(target=coordinator, args=(server, result), daemon=True)
        coord_thread.start()
    coord = connect(MASTER, PORT)
    my_host = coord.getsockname()[0]  # the address this node reaches the others from
    if ROLE == "decode":
        srv = socket.create_server(("0.0.0.0", 0))
        served = [0, 0]
        stop = threading.Event()
        threading.Thread(target=decode_server, args=(srv, served, stop), daemon=True).start()
        send(coord, {"rank": RANK, "role": ROLE, "host": my_host, "port": srv.getsockname()[1]})
        log(f"serving decode for {MODEL} on {my_host}:{srv.getsockname()[1]}")
        recv(coord)  # stop
        stop.set()
        send(coord, {"rank": RANK, "served": served[0], "bytes": served[1]})
        log(f"served {served[0]} request(s), {served[1]} KV bytes")
        return 0
    send(coord, {"rank": RANK, "role": ROLE, "host": my_host})
    decoders = recv(coord)[0]["decoders"]
    conns = [connect(h, p) for h, p in decoders]
    tokens = sent = 0
    t0 = time.perf_counter()
    for i in range(REQUESTS):
        target = (RANK * REQUESTS + i) % len(conns)
        kv = os.urandom(KV_BYTES)
        send(conns[target], {"id": f"{RANK}-{i}"}, kv)
        reply, _ = recv(conns[target])
        if reply["sha256"] != hashlib.sha256(kv).hexdigest() or reply["tokens"] != tokens_for(reply["sha256"]):
            log(f"request {i}: KV cache corrupted on its way to decode rank {PREFILL + target}")
            return 1
        tokens += len(reply["tokens"])
        sent += len(kv)
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.close()
    send(coord, {"rank": RANK, "requests": REQUESTS, "tokens": tokens, "bytes": sent, "seconds": elapsed})
    log(f"{REQUESTS} request(s) to {len(conns)} decode worker(s): {sent / elapsed / 1e6:.1f} MB/s of KV cache")
    if RANK != 0:
        return 0
    assert coord_thread is not None
    coord_thread.join(TIMEOUT)
    if "decode" not in result:
        log("coordinator did not finish")
        return 1
    requests = sum(s["requests"] for s in result["prefill"])
    served = sum(s["served"] for s in result["decode"])
    idle = [s["rank"] for s in result["decode"] if s["served"] == 0]
    if served != requests or idle:
        log(f"lost requests: {requests} sent, {served} served; idle decode ranks {idle}")
        return 1
    total_tokens = sum(s["tokens"] for s in result["prefill"])
    seconds = max(s["seconds"] for s in result["prefill"])
    print(f"{MODEL}: {PREFILL} prefill + {DECODE} decode node(s), {requests} requests, "
          f"{sum(s['bytes'] for s in result['prefill']) / 1e6:.1f} MB of KV cache moved over TCP", flush=True)
    print(f"performance: {total_tokens / seconds:.1f} tokens_per_second", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
