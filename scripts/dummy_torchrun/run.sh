#!/usr/bin/env bash
# A distributed (CPU, gloo) demo: madengine scripts start their workers with
# $MAD_MULTI_NODE_RUNNER (torchrun), single-node or, with multi_node_args, across nodes.
set -euo pipefail
if ! python3 -c "import torch" 2>/dev/null; then
    echo "dummy_torchrun needs PyTorch where the script runs (pip install torch, or an image such as rocm/pytorch)" >&2
    exit 2
fi
echo "runner: $MAD_MULTI_NODE_RUNNER"
# Unquoted on purpose: the runner is a command line (madengine's convention).
$MAD_MULTI_NODE_RUNNER train.py "$@"
