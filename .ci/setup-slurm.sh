#!/usr/bin/env bash
# A real SLURM cluster on this one machine for the SLURM tests (root, no systemd):
# munge, MariaDB + slurmdbd (accounting, so sacct works), slurmctld and four slurmd
# (`slurmd -N n1..n4`) that are four nodes of partitions `debug` (default) and `batch`.
# Idempotent: every step checks first and skips what is already done; a changed config
# restarts the daemons that read it. See shared/reference/slurm.md for the facts behind it.
set -euo pipefail
# The daemons started here must not inherit our caller's descriptors: a `flock` lock held by
# the caller would otherwise be held by dockerd (or slurmctld) for as long as it runs.
for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && { exec {fd}>&-; } 2>/dev/null; done; unset fd
cd "$(dirname "$0")/.."

NODES=${MAD_SLURM_NODES:-4}                 # n1..nN
NODE_PORT0=${MAD_SLURM_NODE_PORT0:-17001}   # slurmd of nK listens on NODE_PORT0+K-1
DB_PASS=${MAD_SLURM_DB_PASSWORD:-mad-slurmdbd}
STATE=/var/lib/mad-ci/slurm
HOST=$(hostname)
mkdir -p "$STATE"

T0=${EPOCHREALTIME/./}
step() {  # step NAME: print the time since the previous step
  local now=${EPOCHREALTIME/./}
  printf '[setup-slurm] %-34s %7.1fs\n' "$1" "$(((now - T0) / 1000))e-3"
  T0=$now
}
wait_for() {  # wait_for SECONDS CMD...: retry CMD every 0.2s until it succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}
die() {  # die MESSAGE LOGFILE: say why, show the log's tail, stop
  echo "[setup-slurm] ERROR: $1" >&2
  [ -n "${2:-}" ] && [ -f "$2" ] && tail -n 30 "$2" >&2
  exit 1
}
alive() {  # alive PIDFILE: the process named in the pid file runs
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}
stop_pidfile() {  # stop_pidfile PIDFILE: SIGTERM, wait up to 30s (slurmctld saves state first)
  local pid
  alive "$1" || return 0
  pid=$(cat "$1"); kill "$pid" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}
install_if_changed() {  # install_if_changed SRC DEST MODE OWNER: 0 = changed
  if [ -f "$2" ] && cmp -s "$1" "$2"; then rm -f "$1"; return 1; fi
  install -m "$3" -o "${4%%:*}" -g "${4##*:}" "$1" "$2"; rm -f "$1"; return 0
}

# --- 1. Debian packages (apt-get update only when something is missing) ---
PKGS=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
status=$(dpkg-query -W -f='${db:Status-Status}\n' "${PKGS[@]}" 2>/dev/null || true)
if [ "$(grep -cx installed <<<"$status")" != "${#PKGS[@]}" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d 101: the packages' postinst must not try to start daemons (no init here)
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >"$STATE/apt.log" 2>&1 \
    || { rm -f /usr/sbin/policy-rc.d; die "apt-get install failed" "$STATE/apt.log"; }
  rm -f /usr/sbin/policy-rc.d
fi
step "apt packages"

# --- 2. munge: key 400 owned by munge, /run/munge owned by munge ---
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 755 /run/munge /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- munged --force
  wait_for 10 sh -c 'munge -n | unmunge' || die "munged does not answer" /var/log/munge/munged.log
fi
step "munged"

# --- 3. MariaDB: started by hand (no init system); database + slurm user ---
cat >"$STATE/99-slurmdbd.cnf" <<'EOF'
[mysqld]
innodb_buffer_pool_size=1024M
innodb_lock_wait_timeout=900
EOF
install_if_changed "$STATE/99-slurmdbd.cnf" /etc/mysql/mariadb.conf.d/99-slurmdbd.cnf 644 root:root || true
install -d -o mysql -g mysql -m 755 /run/mysqld
if ! mariadb-admin ping >/dev/null 2>&1; then
  setsid nohup mariadbd --user=mysql >>/var/log/mad-mariadbd.log 2>&1 </dev/null &
  wait_for 60 mariadb-admin ping || die "MariaDB does not answer 'mariadb-admin ping'" /var/log/mad-mariadbd.log
fi
mariadb <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
step "mariadbd"

# --- 4. Configuration: slurmdbd.conf (600, owned by SlurmUser) and slurm.conf ---
install -d -o slurm -g slurm -m 755 /var/lib/slurm /var/lib/slurm/slurmctld /var/log/slurm /run/slurm
install -d -m 755 /var/lib/slurm/slurmd
for k in $(seq 1 "$NODES"); do install -d -m 755 "/var/lib/slurm/slurmd/n$k"; done
cat >"$STATE/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
DBD_CHANGED=0
install_if_changed "$STATE/slurmdbd.conf" /etc/slurm/slurmdbd.conf 600 slurm:slurm && DBD_CHANGED=1
# Accounting must say slurmdbd BEFORE sacct/sacctmgr are used: with `none` they refuse.
cat >"$STATE/slurm.conf" <<EOF
# Written by .ci/setup-slurm.sh: $NODES nodes on one host ($HOST), one slurmd each.
ClusterName=madci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
SlurmctldPort=6817
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdSpoolDir=/var/lib/slurm/slurmd/%n
SlurmdPidFile=/run/slurm/slurmd-%n.pid
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=n[1-$NODES] NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$NODE_PORT0-$((NODE_PORT0 + NODES - 1)) CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=n[1-$NODES] Default=YES MaxTime=INFINITE State=UP
PartitionName=batch Nodes=n[1-$NODES] MaxTime=INFINITE State=UP
EOF
SLURM_CHANGED=0
install_if_changed "$STATE/slurm.conf" /etc/slurm/slurm.conf 644 root:root && SLURM_CHANGED=1
step "configuration"

# --- 5. slurmdbd ---
if [ "$DBD_CHANGED" = 1 ]; then stop_pidfile /run/slurm/slurmdbd.pid; fi
if ! alive /run/slurm/slurmdbd.pid; then
  slurmdbd
  wait_for 30 sh -c 'ss -ltn | grep -q ":6819 "' || die "slurmdbd does not listen on 6819" /var/log/slurm/slurmdbd.log
fi
step "slurmdbd"

# --- 6. slurmctld (registers the cluster and root's association in slurmdbd itself) ---
if [ "$SLURM_CHANGED" = 1 ]; then
  for k in $(seq 1 "$NODES"); do stop_pidfile "/run/slurm/slurmd-n$k.pid"; done
  stop_pidfile /run/slurm/slurmctld.pid
fi
if ! alive /run/slurm/slurmctld.pid; then
  slurmctld
  wait_for 30 scontrol ping || die "slurmctld does not answer 'scontrol ping'" /var/log/slurm/slurmctld.log
fi
step "slurmctld"

# --- 7. one slurmd per node ---
for k in $(seq 1 "$NODES"); do
  if ! alive "/run/slurm/slurmd-n$k.pid"; then
    slurmd -N "n$k" || die "slurmd -N n$k did not start" "/var/log/slurm/slurmd-n$k.log"
  fi
done
idle_nodes() { sinfo -h -p debug -N -o '%N %t' | grep -cE ' (idle|mix|alloc)$'; }
all_up() { [ "$(idle_nodes)" = "$NODES" ]; }
if ! wait_for 60 all_up; then
  sinfo -N >&2 || true
  die "not all $NODES nodes are up in sinfo" /var/log/slurm/slurmctld.log
fi
step "slurmd x$NODES (sinfo idle)"

# --- 8. accounting answers (the cluster registers a few seconds after slurmctld starts) ---
wait_for 60 sacct -n -X -S now-1minutes || die "sacct does not answer" /var/log/slurm/slurmdbd.log
step "sacct answers"
sinfo
