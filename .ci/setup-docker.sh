#!/usr/bin/env bash
# Make a fresh Debian bookworm machine (root, no systemd) ready for the tests:
# packages, a running dockerd, the base image, and two local registries.
# Idempotent: every step checks first and skips what is already done.
set -euo pipefail
# The daemons started here must not inherit our caller's descriptors: a `flock` lock held by
# the caller would otherwise be held by dockerd (or slurmctld) for as long as it runs.
for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && { exec {fd}>&-; } 2>/dev/null; done; unset fd
cd "$(dirname "$0")/.."
source .ci/env.sh
mkdir -p "$MAD_CI_STATE"

T0=${EPOCHREALTIME/./}; TSTART=$T0
step() {  # step NAME: print the time since the previous step
  local now=${EPOCHREALTIME/./}
  printf '[setup-docker] %-34s %7.1fs\n' "$1" "$(((now - T0) / 1000))e-3"
  T0=$now
}
wait_for() {  # wait_for SECONDS CMD...: retry CMD every 0.5s until it succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# --- 1. Debian packages: apt-get update only when something is missing ---
PKGS=(docker.io debootstrap docker-registry apache2-utils libxml2-utils
      iproute2 procps openmpi-bin curl)
status=$(dpkg-query -W -f='${db:Status-Status}\n' "${PKGS[@]}" 2>/dev/null || true)
if [ "$(grep -cx installed <<<"$status")" != "${#PKGS[@]}" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
fi
step "apt packages"

# --- 2. dockerd: the defaults work here (overlay2 on ext4, iptables-nft NAT,
# docker0 bridge); no daemon.json needed. The machine's /usr/local/bin/docker
# (client 28) talks to Debian's 20.10 daemon by negotiating API 1.41. ---
if ! docker info >/dev/null 2>&1; then
  if ! pgrep -x dockerd >/dev/null; then  # a second dockerd would fail on its pidfile
    setsid nohup dockerd >>/var/log/dockerd.log 2>&1 </dev/null &
  fi
  if ! wait_for 60 docker info; then
    echo "ERROR: dockerd did not answer 'docker info' within 60s; last log lines:" >&2
    tail -n 30 /var/log/dockerd.log >&2
    exit 1
  fi
fi
step "dockerd"

# --- 3. Base image. Two layers so that the slow part is done once:
#   mad-base-rootfs:bookworm  debootstrap'd + docker import (skipped if present)
#   $MAD_TEST_BASE_IMAGE      + this host's extra CA certificates (docker build,
#                             cached by file content, so ~1s when unchanged).
# The CA layer is needed because HTTPS (PyPI) leaving this machine goes through
# a TLS-intercepting proxy whose CA lives in /usr/local/share/ca-certificates;
# without it pip in a container fails with CERTIFICATE_VERIFY_FAILED. Plain
# http (apt, deb.debian.org) and DNS work from containers as they are.
# python3-pip + ca-certificates are included so test images can pip install
# (e.g. torch) without an apt-get step of their own.
ROOTFS_IMAGE=mad-base-rootfs:bookworm
if ! docker image inspect "$ROOTFS_IMAGE" >/dev/null 2>&1; then
  # Same mirror apt uses on this host (override with MAD_DEBIAN_MIRROR).
  MIRROR=${MAD_DEBIAN_MIRROR:-$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null \
          | awk '$2 == "bookworm" {print $1; exit}')}
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
  ROOT=$(mktemp -d "$MAD_CI_STATE/rootfs.XXXXXX")
  trap 'rm -rf "$ROOT"' EXIT
  debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates,procps \
    bookworm "$ROOT" "$MIRROR" >"$MAD_CI_STATE/debootstrap.log" 2>&1 \
    || { tail -n 30 "$MAD_CI_STATE/debootstrap.log" >&2; exit 1; }
  # debootstrap leaves the .debs and package lists behind (~90 MB).
  find "$ROOT/var/cache/apt/archives" "$ROOT/var/lib/apt/lists" -type f -delete
  tar -C "$ROOT" -c . | docker import -c 'CMD ["/bin/bash"]' - "$ROOTFS_IMAGE" >/dev/null
  rm -rf "$ROOT"; trap - EXIT
  step "base rootfs (debootstrap+import)"
fi
CTX="$MAD_CI_STATE/base-ctx"
rm -rf "$CTX"; mkdir -p "$CTX/certs"
cp /usr/local/share/ca-certificates/*.crt "$CTX/certs/" 2>/dev/null || true  # none: empty dir
cat >"$CTX/Dockerfile" <<EOF
FROM $ROOTFS_IMAGE
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
# Debian marks its python EXTERNALLY-MANAGED (PEP 668); test images may pip
# install into the system python. PIP_CERT/REQUESTS_CA_BUNDLE keep a pip or
# requests from PyPI (certifi bundle) working behind the proxy too.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \\
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
EOF
# Legacy builder: client 28 has no buildx plugin and Debian's daemon is 20.10.
DOCKER_BUILDKIT=0 docker build -q -t "$MAD_TEST_BASE_IMAGE" "$CTX" >/dev/null 2>"$MAD_CI_STATE/base-build.log" \
  || { cat "$MAD_CI_STATE/base-build.log" >&2; exit 1; }
step "base image $MAD_TEST_BASE_IMAGE"

# --- 4. Local registries (Debian's docker-registry), bound to loopback. ---
start_registry() {  # start_registry NAME HOST:PORT [auth]
  local dir="$MAD_CI_STATE/registry-$1" addr=$2 auth=${3:-}
  mkdir -p "$dir/data"
  if [ -n "$auth" ] && ! htpasswd -vb "$dir/htpasswd" "$MAD_TEST_REGISTRY_USER" \
       "$MAD_TEST_REGISTRY_PASSWORD" >/dev/null 2>&1; then
    # docker-registry only accepts bcrypt entries, hence -B.
    htpasswd -Bbn "$MAD_TEST_REGISTRY_USER" "$MAD_TEST_REGISTRY_PASSWORD" >"$dir/htpasswd"
  fi
  cat >"$dir/config.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $dir/data}
  delete: {enabled: true}
http: {addr: $addr, secret: mad-ci-only}
EOF
  if [ -n "$auth" ]; then
    printf 'auth:\n  htpasswd: {realm: mad-ci, path: %s}\n' "$dir/htpasswd" >>"$dir/config.yml"
  fi
  # Anything that answers HTTP on /v2/ (200, or 401 with auth) counts as up.
  local probe=(curl -s -o /dev/null "http://$addr/v2/")
  if ! "${probe[@]}"; then
    setsid nohup docker-registry serve "$dir/config.yml" >>"$dir/registry.log" 2>&1 </dev/null &
    wait_for 30 "${probe[@]}" \
      || { echo "ERROR: registry $1 on $addr did not start:" >&2; tail -n 20 "$dir/registry.log" >&2; exit 1; }
  fi
}
start_registry open "$MAD_TEST_REGISTRY"
start_registry auth "$MAD_TEST_AUTH_REGISTRY" auth
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$MAD_TEST_AUTH_REGISTRY/v2/")
[ "$code" = 401 ] || { echo "ERROR: $MAD_TEST_AUTH_REGISTRY answers $code without credentials, want 401" >&2; exit 1; }
step "registries"

# --- 5. Smoke test: login, push and pull through both registries. ---
# (output kept only on failure: login always warns about unencrypted storage)
out=$(echo "$MAD_TEST_REGISTRY_PASSWORD" | docker login "$MAD_TEST_AUTH_REGISTRY" \
      -u "$MAD_TEST_REGISTRY_USER" --password-stdin 2>&1) || { echo "$out" >&2; exit 1; }
for reg in "$MAD_TEST_REGISTRY" "$MAD_TEST_AUTH_REGISTRY"; do
  ref="$reg/$MAD_TEST_BASE_IMAGE"  # stays in the registry for tests to pull
  docker tag "$MAD_TEST_BASE_IMAGE" "$ref"
  docker push -q "$ref" >/dev/null
  docker rmi "$ref" >/dev/null  # so the pull re-resolves the tag from the registry
  docker pull -q "$ref" >/dev/null
  docker rmi "$ref" >/dev/null
done
# Log out again: tests must exercise their own login, not inherit ours.
docker logout "$MAD_TEST_AUTH_REGISTRY" >/dev/null
step "registry login/push/pull"
T0=$TSTART; step "TOTAL"
