# CONTEXT {'gpu_vendor': 'AMD', 'guest_os': 'UBUNTU', 'ctx_test': '3'}
ARG BASE_DOCKER=mad-base:bookworm
FROM $BASE_DOCKER
ENV PICKED=3
