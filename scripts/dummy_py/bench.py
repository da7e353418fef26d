"""A tiny pure-Python throughput benchmark printing madengine's performance line."""

import argparse
import os
import time

parser = argparse.ArgumentParser()
parser.add_argument("--iters", type=int, default=100000)
args = parser.parse_args()

for _ in range(int(os.environ.get("DEMO_WARMUP", "0"))):
    pass
start = time.perf_counter()
total = 0
for i in range(args.iters):
    total += i * i
elapsed = time.perf_counter() - start
print(f"{os.environ.get('MAD_MODEL_NAME')}: {args.iters} iterations in {elapsed:.4f} s")
print(f"performance: {args.iters / elapsed:.1f} iterations_per_second")
