#!/bin/bash
echo "performance: 5.5 samples_per_second"
