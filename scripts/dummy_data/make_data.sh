#!/usr/bin/env bash
# The custom data provider of dataname demo_custom: run before the model, in the data folder
# (MAD_DATAHOME); writes what the model reads. Args: the number of words.
set -euo pipefail
n="${1:-3}"
for i in $(seq 1 "$n"); do echo "word$i"; done > words.txt
echo "made $n words in $PWD for $MAD_DATANAME"
