#!/bin/bash
# The picked Dockerfile sets PICKED; madengine's ctx_test selects it.
echo "performance: ${PICKED:-none} picks"
