#!/usr/bin/env bash
# Diagnostic (not run by .ci/run): can containers reach Debian's mirror and
# PyPI the way the host does? Checks `docker run` on the default bridge and
# with --network host, and `docker build` RUN steps on both. Run after
# setup-docker.sh. Prints one PASS/FAIL line per check; exits non-zero on a FAIL.
set -uo pipefail
cd "$(dirname "$0")/.."
source .ci/env.sh
PROBE='apt-get update -qq && pip download -q --no-deps -d /tmp/w six==1.16.0'
fail=0
check() {  # check NAME CMD...
  local t=${EPOCHREALTIME/./} out
  if out=$("${@:2}" 2>&1); then r=PASS; else r=FAIL; fail=1; fi
  printf '%s %-22s %5.1fs\n' "$r" "$1" "$(((${EPOCHREALTIME/./} - t) / 1000))e-3"
  [ $r = PASS ] || tail -n 5 <<<"$out"
}
check "run bridge" docker run --rm "$MAD_TEST_BASE_IMAGE" sh -c "$PROBE"
check "run --network host" docker run --rm --network host "$MAD_TEST_BASE_IMAGE" sh -c "$PROBE"
ctx=$(mktemp -d); trap 'rm -rf "$ctx"' EXIT
printf 'FROM %s\nRUN %s\n' "$MAD_TEST_BASE_IMAGE" "$PROBE" >"$ctx/Dockerfile"
check "build bridge" docker build --no-cache -q -t mad-ci-netcheck:bridge "$ctx"
check "build --network host" docker build --no-cache -q --network host -t mad-ci-netcheck:host "$ctx"
docker rmi mad-ci-netcheck:bridge mad-ci-netcheck:host >/dev/null 2>&1
exit $fail
