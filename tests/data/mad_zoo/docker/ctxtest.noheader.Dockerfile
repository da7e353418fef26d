ARG BASE_DOCKER=mad-base:bookworm
FROM $BASE_DOCKER
RUN echo noheader > /zoo-flavour
