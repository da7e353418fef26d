"""A tiny pure-Python throughput benchmark printing madengine's performance line."""

import argparse
import os
import sys
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
# A stand-in for a rocBLAS-backed step: rocBLAS logs each call as a rocblas-bench command line on
# stderr when ROCBLAS_LAYER has its bench bit (2); the library-trace tools count those lines.
if int(os.environ.get("ROCBLAS_LAYER", "0") or "0") & 2:
    for _ in range(3):
        print(f"./rocblas-bench -f gemm -r f32_r --transposeA N --transposeB N -m {args.iters} -n 1 -k 1",
              file=sys.stderr, flush=True)
print(f"{os.environ.get('MAD_MODEL_NAME')}: {args.iters} iterations in {elapsed:.4f} s")
print(f"performance: {args.iters / elapsed:.1f} iterations_per_second")
