#!/usr/bin/env bash
# The data-provider tests' tools (idempotent): sshd, sshpass, rsync and sshfs for the NAS
# provider (the tests start their own sshd on a loopback port), and the user it logs in as.
# moto's S3 server and the aws CLI come from the test extra (pyproject).
set -euo pipefail
# The daemons started here must not inherit our caller's descriptors: a `flock` lock held by
# the caller would otherwise be held by dockerd (or slurmctld) for as long as it runs.
for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && { exec {fd}>&-; } 2>/dev/null; done; unset fd
if ! [ -x /usr/sbin/sshd ] || ! command -v sshpass >/dev/null || ! command -v rsync >/dev/null \
   || ! command -v sshfs >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client sshpass rsync sshfs >/dev/null
fi
# The NAS tests' login (its password is set afresh by each test session).
id madnas >/dev/null 2>&1 || useradd -m -s /bin/bash madnas
mkdir -p /run/sshd
