#!/bin/bash
# A nested-folder model: says what madengine's environment gave it, then its performance line.
echo "args=[$*] hip=${MAD_SYSTEM_HIP_VERSION-unset} product=${MAD_SYSTEM_GPU_PRODUCT_NAME-unset}"
echo "performance: 7.5 samples_per_second"
