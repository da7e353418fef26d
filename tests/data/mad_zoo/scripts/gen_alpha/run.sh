#!/bin/bash
echo "args: $*"
echo "performance: 9.5 samples_per_second"
