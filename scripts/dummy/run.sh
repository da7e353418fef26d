#!/usr/bin/env bash
# A stand-in workload: reads its args like a real benchmark and prints madengine's
# performance line. MAD_MULTI_NODE_RUNNER is always set, as madengine guarantees.
set -euo pipefail
batch=1
while [ $# -gt 0 ]; do
    case "$1" in
        --batch-size) batch="$2"; shift 2 ;;
        *) echo "ignoring argument: $1"; shift ;;
    esac
done
echo "model=$MAD_MODEL_NAME gpus=$MAD_RUNTIME_NGPUS vendor=$MAD_GPU_VENDOR runner=[$MAD_MULTI_NODE_RUNNER]"
start=$(date +%s%N)
for _ in $(seq 1 2000); do :; done
end=$(date +%s%N)
elapsed_ns=$(( end - start > 0 ? end - start : 1 ))
samples=$(( batch * 2000 * 1000000000 / elapsed_ns ))
echo "performance: $samples samples_per_second"
