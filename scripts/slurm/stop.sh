#!/usr/bin/env bash
# Stop the single-node cluster started by scripts/slurm/start.sh (by its pid files).
set -u
STATE=${1:-/tmp/harness-slurm}
for name in slurmd slurmctld munged; do
  pidf="$STATE/run/$name.pid"
  if [ -f "$pidf" ]; then
    kill "$(cat "$pidf")" 2>/dev/null || true
  fi
done
sleep 1
for name in slurmd slurmctld munged; do
  pidf="$STATE/run/$name.pid"
  [ -f "$pidf" ] && kill -9 "$(cat "$pidf")" 2>/dev/null; rm -f "$pidf"
done
exit 0
