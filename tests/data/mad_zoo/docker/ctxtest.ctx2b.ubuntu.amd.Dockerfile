#CONTEXT {"gpu_vendor": "AMD", "ctx_test": "2"}
ARG BASE_DOCKER=mad-base:bookworm
FROM $BASE_DOCKER
RUN echo ctx2b > /zoo-flavour
