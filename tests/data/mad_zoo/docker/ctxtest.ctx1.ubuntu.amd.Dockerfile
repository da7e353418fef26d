# CONTEXT {'gpu_vendor': 'AMD', 'guest_os': 'UBUNTU', 'ctx_test': '1'}
ARG BASE_DOCKER=mad-base:bookworm
FROM $BASE_DOCKER
RUN echo ctx1 > /zoo-flavour
