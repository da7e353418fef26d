#!/bin/bash
# A folder model: madengine runs run.sh inside it.
echo "performance: 7 iterations_per_second"
