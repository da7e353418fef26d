#!/bin/bash
# A zoo model: prints madengine's performance line.
set -e
echo "model=$MAD_MODEL_NAME runtime_ngpus=$MAD_RUNTIME_NGPUS cwd=$(pwd)"
echo "performance: 42.5 samples_per_second"
