#!/usr/bin/env bash
# CI: install (if missing) and start a one-node Slurm cluster on localhost, so tests can
# `sbatch --array=... --wait`. Runs as root on a fresh Debian machine without systemd.
# Idempotent: exits 0 at once when the node is already idle; restarts any daemon that died.
# Writes /etc/slurm/slurm.conf (the Debian client tools' default), state under $SLURM_SCRATCH.
set -euo pipefail

SCRATCH=${SLURM_SCRATCH:-/var/tmp/runner-slurm}
CONF=/etc/slurm/slurm.conf
NODE=$(hostname -s)
NCPU=$(nproc)
WAIT_S=${SLURM_UP_TIMEOUT:-60}

node_state() { timeout 10 sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1 || true; }
up_line() { echo "slurm: up (node $NODE, $NCPU CPUs)"; }
# PIDs of live (not zombie) processes named $1; /proc only, since a bare Debian may lack procps.
pids_of() {
  local f pid rest
  for f in /proc/[0-9]*/stat; do
    read -r pid rest 2>/dev/null <"$f" || continue
    # rest = "(comm) STATE ..."; comm may hold spaces, so cut at the last ')'.
    [ "${rest%)*}" = "($1" ] || continue
    rest=${rest##*) }
    [ "${rest%% *}" = Z ] || echo "$pid"
  done
}
running() { [ -n "$(pids_of "$1")" ]; }
stop() {  # stop all processes named $1, bounded wait
  local pid
  for pid in $(pids_of "$1"); do kill "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 20); do running "$1" || return 0; sleep 0.5; done
  for pid in $(pids_of "$1"); do kill -9 "$pid" 2>/dev/null || true; done
}

# Already up: nothing to do.
if command -v sinfo >/dev/null 2>&1 && running munged && running slurmctld && running slurmd \
   && [ "$(node_state)" = idle ]; then
  up_line
  exit 0
fi

if ! command -v slurmctld >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi

dump_logs() {
  echo "slurm: failed to come up: $*" >&2
  for f in "$SCRATCH"/log/munged.log "$SCRATCH"/log/slurmctld.log "$SCRATCH"/log/slurmd.log; do
    [ -f "$f" ] || continue
    echo "----- $f (last 60 lines) -----" >&2
    tail -n 60 "$f" >&2 || true
  done
  echo "----- sinfo -----" >&2
  timeout 10 sinfo -N -l >&2 || true
  exit 1
}

# --- munge -----------------------------------------------------------------------------------
MUNGE_USER=root
id munge >/dev/null 2>&1 && MUNGE_USER=munge
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
chown "$MUNGE_USER": /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  if command -v mungekey >/dev/null 2>&1; then
    mungekey --create --force --keyfile=/etc/munge/munge.key
  else
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
fi
chown "$MUNGE_USER": /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key

mkdir -p "$SCRATCH"/log "$SCRATCH"/state "$SCRATCH"/spool/slurmd "$SCRATCH"/run
if ! running munged; then
  rm -f /run/munge/munged.pid
  touch "$SCRATCH"/log/munged.log
  chown "$MUNGE_USER": "$SCRATCH"/log/munged.log
  if [ "$MUNGE_USER" = munge ]; then
    # As the package intends: munged as user munge, which owns the key, socket and seed dirs.
    setpriv --reuid=munge --regid=munge --clear-groups \
      munged --log-file="$SCRATCH"/log/munged.log
  else
    # No munge user: run as root; --force accepts root-owned key/socket dirs without complaint.
    munged --force --log-file="$SCRATCH"/log/munged.log
  fi
fi
for _ in $(seq 1 20); do
  munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
  sleep 0.5
done
munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 || dump_logs "munge does not work"

# --- slurm.conf ------------------------------------------------------------------------------
MEM_MB=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 / 2 ))
[ "$MEM_MB" -gt 1024 ] && MEM_MB=1024
mkdir -p "$(dirname "$CONF")"
NEW_CONF=$(cat <<EOF
# Written by runner's .ci/slurm_up.sh: a one-node cluster on localhost for CI.
ClusterName=runnerci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
ReturnToService=2
MaxArraySize=100001
MinJobAge=300
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$SCRATCH/state
SlurmdSpoolDir=$SCRATCH/spool/slurmd
SlurmctldPidFile=$SCRATCH/run/slurmctld.pid
SlurmdPidFile=$SCRATCH/run/slurmd.pid
SlurmctldLogFile=$SCRATCH/log/slurmctld.log
SlurmdLogFile=$SCRATCH/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEW_CONF" ]; then
  printf '%s\n' "$NEW_CONF" >"$CONF"
  # A changed config needs fresh daemons.
  stop slurmd
  stop slurmctld
fi
chmod 0644 "$CONF"

# --- daemons ---------------------------------------------------------------------------------
if ! running slurmctld; then
  rm -f "$SCRATCH"/run/slurmctld.pid
  slurmctld -f "$CONF" || dump_logs "slurmctld did not start"
fi
if ! running slurmd; then
  rm -f "$SCRATCH"/run/slurmd.pid
  slurmd -f "$CONF" -N "$NODE" || dump_logs "slurmd did not start"
fi

# --- wait for the node to be idle ------------------------------------------------------------
deadline=$(( SECONDS + WAIT_S ))
state=""
while [ "$SECONDS" -lt "$deadline" ]; do
  state=$(node_state)
  case "$state" in
    idle) break ;;
    down*|drain*|fail*)
      timeout 10 scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
[ "$state" = idle ] || dump_logs "node $NODE is '${state:-unknown}', not idle, after ${WAIT_S}s"

# --- and a trivial job must run --------------------------------------------------------------
left=$(( deadline - SECONDS )); [ "$left" -lt 15 ] && left=15
timeout "$left" srun -N1 -n1 -t 1 true >/dev/null 2>&1 || dump_logs "srun -N1 true failed"

up_line
