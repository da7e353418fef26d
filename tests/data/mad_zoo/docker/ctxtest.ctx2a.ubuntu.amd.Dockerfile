# Variant A of the context test.
# CONTEXT {'gpu_vendor': 'AMD', 'guest_os': 'UBUNTU', 'ctx_test': '2'}
ARG BASE_DOCKER=mad-base:bookworm
FROM $BASE_DOCKER
RUN echo ctx2a > /zoo-flavour
