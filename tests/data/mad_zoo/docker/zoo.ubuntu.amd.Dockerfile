# CONTEXT {'gpu_vendor': 'AMD', 'guest_os': 'UBUNTU'}
# A zoo image: madengine's convention of a registry base image given as a build arg.
ARG BASE_DOCKER=mad-base:bookworm
FROM $BASE_DOCKER
RUN echo zoo-amd > /zoo-flavour
