# Sourced (not executed) by .ci/run, .ci/setup-docker.sh and anyone who wants
# to run the tests by hand: where the CI's Docker resources live.
# Plain assignments with ${VAR:-default} so a caller can override any of them.

export MAD_TEST_BASE_IMAGE="${MAD_TEST_BASE_IMAGE:-mad-base:bookworm}"
# Registries on loopback: Docker treats 127.0.0.0/8 as insecure by default,
# so plain http works with no daemon.json "insecure-registries" entry.
export MAD_TEST_REGISTRY="${MAD_TEST_REGISTRY:-127.0.0.1:5000}"          # no auth
export MAD_TEST_AUTH_REGISTRY="${MAD_TEST_AUTH_REGISTRY:-127.0.0.1:5001}" # htpasswd auth
export MAD_TEST_REGISTRY_USER="${MAD_TEST_REGISTRY_USER:-maduser}"
export MAD_TEST_REGISTRY_PASSWORD="${MAD_TEST_REGISTRY_PASSWORD:-madpass-s3cret}"
# State (registry configs/data, debootstrap scratch, logs) for the CI scripts.
export MAD_CI_STATE="${MAD_CI_STATE:-/var/lib/mad-ci}"
