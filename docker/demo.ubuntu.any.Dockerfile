# CONTEXT {'guest_os': 'UBUNTU'}
# The demo image: any GPU vendor (or none). BASE_DOCKER comes from docker_build_arg;
# the default is the image .ci/setup-docker.sh makes from debootstrap.
ARG BASE_DOCKER=mad-base:bookworm
FROM ${BASE_DOCKER}
ENV DEMO_IMAGE=1
