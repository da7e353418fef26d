# CONTEXT {'gpu_vendor': 'AMD', 'guest_os': 'UBUNTU'}
ARG BASE_DOCKER=mad-base:bookworm
FROM $BASE_DOCKER
RUN echo gen-local > /zoo-flavour
