#!/bin/bash
# Writes a multiple_results CSV with more columns than madengine's three.
set -e
out="${MAD_OUTPUT_CSV:-perf_dummy_multi.csv}"
{
  echo "model,performance,metric,batch_size,latency_ms"
  echo "dummy_multi_bs8,101.5,tokens_per_second,8,12.5"
  echo "dummy_multi_bs16,180.25,tokens_per_second,16,20.0"
} > "$out"
echo "wrote $out with args: $*"
