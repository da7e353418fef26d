#!/usr/bin/env bash
# Stand-in for MAD's disaggregated prefill/decode SGLang launcher (scripts/<FRAMEWORK>/run.sh):
# sglang cannot be installed here, so the serving is played by disagg.py, but everything a
# framework launcher does for pytest-madengine is real: it reads madengine's slurm_args from
# its environment, writes a batch script, submits ONE job of PREFILL_NODES + DECODE_NODES
# nodes and prints "Submitted batch job N". In the job, node ranks 0..PREFILL_NODES-1 are
# prefill workers and the rest decode workers; they hand "KV caches" over TCP (checksummed)
# and rank 0 prints the `performance:` line.
#
# Environment: MODEL_NAME PREFILL_NODES DECODE_NODES PARTITION TIME (required);
# DOCKER_IMAGE ('' = run on the nodes' own python3), ACCOUNT, QOS, NODELIST, EXCLUDE,
# MAD_SLURM_LOG_DIR (where the job's output goes; default the current folder),
# DISAGG_REQUESTS (per prefill node, default 16), DISAGG_KV_BYTES (default 1 MiB).
set -euo pipefail
: "${MODEL_NAME:?MODEL_NAME is required (from the model args: --model NAME)}"
: "${PREFILL_NODES:?PREFILL_NODES is required}"
: "${DECODE_NODES:?DECODE_NODES is required}"
: "${PARTITION:?PARTITION is required}"
: "${TIME:?TIME is required}"
for n in "$PREFILL_NODES" "$DECODE_NODES"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "sglang_disagg: node counts must be positive integers, got '$n'" >&2; exit 2; }
done
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOGDIR=${MAD_SLURM_LOG_DIR:-$PWD}
mkdir -p "$LOGDIR"
NODES=$((PREFILL_NODES + DECODE_NODES))

# What every node runs: on the node, or in DOCKER_IMAGE with this folder mounted.
if [ -n "${DOCKER_IMAGE:-}" ]; then
  RUN=(docker run --rm --network host -v "$HERE:$HERE:ro"
       -e SLURM_JOB_ID -e SLURM_PROCID -e SLURM_NTASKS -e SLURM_JOB_NODELIST -e SLURM_LAUNCH_NODE_IPADDR
       -e PREFILL_NODES -e DECODE_NODES -e MODEL_NAME -e DISAGG_REQUESTS -e DISAGG_KV_BYTES -e DISAGG_MASTER
       "$DOCKER_IMAGE" python3 "$HERE/disagg.py")
else
  RUN=(python3 "$HERE/disagg.py")
fi

OPTS=(--nodes="$NODES" --ntasks-per-node=1 --partition="$PARTITION" --time="$TIME"
      --output="$LOGDIR/sglang_disagg-%j.out")
[ -n "${ACCOUNT:-}" ] && OPTS+=(--account="$ACCOUNT")
[ -n "${QOS:-}" ] && OPTS+=(--qos="$QOS")
[ -n "${NODELIST:-}" ] && OPTS+=(--nodelist="$NODELIST")
[ -n "${EXCLUDE:-}" ] && OPTS+=(--exclude="$EXCLUDE")

BATCH="$LOGDIR/sglang_disagg.sbatch"
{
  echo "#!/bin/bash"
  printf '#SBATCH %s\n' "${OPTS[@]}"
  echo "# $MODEL_NAME: $PREFILL_NODES prefill + $DECODE_NODES decode node(s)"
  echo "export PREFILL_NODES=$PREFILL_NODES DECODE_NODES=$DECODE_NODES MODEL_NAME=$(printf '%q' "$MODEL_NAME")"
  # The coordinator (rank 0) runs on the job's first node, which is where this script runs.
  echo 'FIRST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
  echo 'export DISAGG_MASTER=$(getent hosts "$FIRST" | awk "{print \$1; exit}")'
  echo '[ -n "$DISAGG_MASTER" ] || export DISAGG_MASTER=$(scontrol show node "$FIRST" -o | sed -n "s/.*NodeAddr=\([^ ]*\).*/\1/p")'
  printf 'srun --kill-on-bad-exit=1 --ntasks-per-node=1 --output=%q' "$LOGDIR/sglang_disagg-%j.node%t.out"
  printf ' %q' "${RUN[@]}"
  echo
} >"$BATCH"
echo "sglang_disagg: $MODEL_NAME on $NODES node(s) ($PREFILL_NODES prefill, $DECODE_NODES decode), partition $PARTITION, time $TIME"
sbatch "$BATCH"
