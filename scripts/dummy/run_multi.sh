#!/usr/bin/env bash
# Reports several results through madengine's multiple_results CSV ($MAD_OUTPUT_CSV).
set -euo pipefail
out="${MAD_OUTPUT_CSV:-perf_dummy_multi.csv}"
{
    echo "model,performance,metric,batch_size"
    echo "bs1,$(( 1000 + RANDOM % 100 )),samples_per_second,1"
    echo "bs8,$(( 7000 + RANDOM % 700 )),samples_per_second,8"
    echo "latency_bs1,$(( 5 + RANDOM % 3 )).25,ms,1"
} > "$out"
echo "wrote $out"
