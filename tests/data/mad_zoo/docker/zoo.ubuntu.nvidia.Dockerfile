# CONTEXT {'gpu_vendor': 'NVIDIA', 'guest_os': 'UBUNTU'}
ARG BASE_DOCKER=mad-base:bookworm
FROM $BASE_DOCKER
RUN echo zoo-nvidia > /zoo-flavour
