"""Data-parallel toy training on CPU with gloo: every rank computes gradients of a small
linear model and all-reduces them. The all_reduce of (rank + 1) checks that every rank
joined; rank 0 prints the run's throughput (all ranks' samples per second)."""

import argparse
import os
import socket
import sys
import time

import torch
import torch.distributed as dist


def listening_addresses() -> list[str]:
    """TCP addresses this process listens on (gloo's listener shows which interface it uses)."""
    inodes = set()
    try:
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        with open("/proc/net/tcp") as fh:
            rows = fh.read().splitlines()[1:]
    except OSError:
        return []
    out = []
    for row in rows:
        f = row.split()
        if len(f) > 9 and f[9] in inodes and f[3] == "0A":  # 0A = LISTEN
            ip, port = f[1].split(":")
            out.append(f"{socket.inet_ntoa(bytes.fromhex(ip)[::-1])}:{int(port, 16)}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    check = torch.tensor([float(rank + 1)])
    dist.all_reduce(check)
    expected = world * (world + 1) / 2
    print(f"rank {rank}/{world} on {socket.gethostname()}: all_reduce sum {check.item():g} (expected {expected:g}); "
          f"GLOO_SOCKET_IFNAME={os.environ.get('GLOO_SOCKET_IFNAME', '')}; gloo listens on {listening_addresses()}",
          flush=True)
    if check.item() != expected:
        raise SystemExit(f"all_reduce gave {check.item()}, expected {expected}: not every rank joined")

    torch.manual_seed(rank)
    model = torch.nn.Linear(256, 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        x, y = torch.randn(args.batch_size, 256), torch.randn(args.batch_size, 16)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= world
        opt.step()
    dist.barrier()
    elapsed = time.perf_counter() - start
    if rank == 0:
        print(f"performance: {world * args.steps * args.batch_size / elapsed:.2f} samples_per_second", flush=True)
    # Every rank is past its last collective (the barrier above). Leave without running
    # destructors: torch 2.13's gloo teardown at interpreter exit aborts now and then
    # ("terminate called without an active exception", SIGABRT) when the ranks share a host name
    # (network namespaces, containers on one host), which turns a finished run into a failure.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
