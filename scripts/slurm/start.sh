#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine (no systemd), for the launcher's integration test.
#   scripts/slurm/start.sh [STATE_DIR]     -> prints `export SLURM_CONF=...`; stop with scripts/slurm/stop.sh
# Installs munge/slurmctld/slurmd/slurm-client with apt if missing (Debian 12: 22.05). Everything (config,
# keys, logs, pid files, spool) lives in STATE_DIR (default /tmp/harness-slurm).
set -euo pipefail
STATE=${1:-/tmp/harness-slurm}
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  if [ "$(id -u)" != 0 ]; then echo "slurm not installed and not root: cannot apt-get install" >&2; exit 3; fi
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq munge slurmctld slurmd slurm-client) \
    >"${STATE}.apt.log" 2>&1 || { echo "apt-get install of slurm failed (see ${STATE}.apt.log)" >&2; exit 3; }
fi
mkdir -p "$STATE"/{munge,spool/ctld,spool/d,log,run}
chmod 700 "$STATE/munge"
HOST=$(hostname -s)
USER_NAME=$(id -un)
# munge: key mode 400, socket dir 755
if [ ! -f "$STATE/munge/munge.key" ]; then
  dd if=/dev/urandom bs=1 count=1024 of="$STATE/munge/munge.key" 2>/dev/null
  chmod 400 "$STATE/munge/munge.key"
fi
mkdir -p "$STATE/munge/sock"; chmod 755 "$STATE/munge/sock"
SOCK="$STATE/munge/sock/munge.socket.2"
if ! [ -S "$SOCK" ] || ! munge -n -S "$SOCK" >/dev/null 2>&1; then
  munged --force --key-file="$STATE/munge/munge.key" --socket="$SOCK" --pid-file="$STATE/run/munged.pid" \
    --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/munge.seed"
fi
MEM=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
MEM=$(( MEM * 90 / 100 ))
CPUS=$(nproc)
OVERRIDES=""
if [ "$CPUS" -lt 2 ]; then  # tests/test_slurm.py runs a 2-task job (2 CPUs): declare 2 on a 1-core machine
  CPUS=2; OVERRIDES="SlurmdParameters=config_overrides"
fi
cat > "$STATE/slurm.conf" <<CONF
ClusterName=harness
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=${USER_NAME}
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${SOCK},cred_expire=10
StateSaveLocation=${STATE}/spool/ctld
SlurmdSpoolDir=${STATE}/spool/d
SlurmctldPidFile=${STATE}/run/slurmctld.pid
SlurmdPidFile=${STATE}/run/slurmd.pid
SlurmctldLogFile=${STATE}/log/slurmctld.log
SlurmdLogFile=${STATE}/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
JobRequeue=1
MinJobAge=300
KillWait=5
${OVERRIDES}
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$STATE/slurm.conf"
if ! [ -f "$STATE/run/slurmctld.pid" ] || ! kill -0 "$(cat "$STATE/run/slurmctld.pid")" 2>/dev/null; then
  slurmctld -f "$SLURM_CONF" -i
fi
if ! [ -f "$STATE/run/slurmd.pid" ] || ! kill -0 "$(cat "$STATE/run/slurmd.pid")" 2>/dev/null; then
  slurmd -f "$SLURM_CONF" -N "$HOST"
fi
for _ in $(seq 1 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qE "idle|mixed|alloc"; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "slurm did not come up; see $STATE/log" >&2
exit 4
