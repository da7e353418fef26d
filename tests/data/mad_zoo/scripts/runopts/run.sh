#!/bin/bash
# Checks that the card's docker run options reached the container.
set -e
[ "$ZOO_OPT" = from-card ] || { echo "ZOO_OPT is '$ZOO_OPT'"; exit 3; }
[ "$ZOO_REPO" = https://example.invalid/x ] || { echo "ZOO_REPO is '$ZOO_REPO'"; exit 3; }
[ "$(ulimit -n)" = 4096 ] || { echo "nofile is $(ulimit -n)"; exit 4; }
echo "performance: 5 checks_per_second"
