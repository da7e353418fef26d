# CONTEXT {'gpu_vendor': 'AMD', 'guest_os': 'UBUNTU', 'ctx_test': 'None'}
# Picked when no ctx_test is given: madengine detects ctx_test as 'None' without a ctx_test file.
ARG BASE_DOCKER=mad-base:bookworm
FROM $BASE_DOCKER
ENV PICKED=0
