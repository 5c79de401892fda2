#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine (Debian's slurm-wlm + munge), for tests and local trials.
#
#   eval "$(bash scripts/slurm_local.sh start /tmp/slurm-dev)"   # prints `export SLURM_CONF=...`
#   sbatch --wrap 'hostname'; squeue; harness slurm submit suites/quick.yaml ...
#   bash scripts/slurm_local.sh stop /tmp/slurm-dev               # kills only the daemons it started, by pid
#
# Everything (munge key and socket, slurm.conf, state, spool, logs, pid files) lives in the given directory, on
# free ports, so nothing in /etc is touched and a system cluster (if any) is left alone. Needs root (slurmd
# starts jobs as their owner) and `apt-get install -y slurm-wlm munge`.
set -euo pipefail

action=${1:-}; dir=${2:-}
if [ -z "$action" ] || [ -z "$dir" ]; then echo "usage: $0 start|stop DIR" >&2; exit 2; fi

stop() {
  # slurmd first (it reports to slurmctld), munged last (both daemons authenticate through it).
  for name in slurmd slurmctld munged; do
    pidfile="$dir/$name.pid"
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
}

if [ "$action" = stop ]; then stop; exit 0; fi
if [ "$action" != start ]; then echo "unknown action '$action' (start|stop)" >&2; exit 2; fi

for bin in munged slurmctld slurmd sbatch; do
  command -v "$bin" >/dev/null || { echo "missing $bin; fix: apt-get install -y slurm-wlm munge" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "slurmd needs root to start jobs; run as root" >&2; exit 1; }

dir=$(mkdir -p "$dir" && cd "$dir" && pwd)
mkdir -p "$dir/state" "$dir/spool" "$dir/log"
trap 'stop' ERR  # a half-started cluster is torn down again

# munge: a private key and socket.
head -c 1024 /dev/urandom >"$dir/munge.key"
chmod 0400 "$dir/munge.key"
munged --force --socket="$dir/munge.socket" --key-file="$dir/munge.key" --pid-file="$dir/munged.pid" \
  --log-file="$dir/log/munged.log" --seed-file="$dir/munged.seed" 2>>"$dir/log/munged.log"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
host=$(hostname -s)
cat >"$dir/slurm.conf" <<EOF
ClusterName=harness-local
SlurmctldHost=$host
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge.socket,cred_expire=5
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
# Quick turnaround for tests: requeued jobs may start again at once, finished jobs stay visible 5 minutes.
MinJobAge=300
KillWait=30
MpiDefault=none
NodeName=$host CPUs=$(nproc) State=UNKNOWN
PartitionName=$host Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 100); do
  if sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then echo "export SLURM_CONF=$SLURM_CONF"; exit 0; fi
  sleep 0.3
done
echo "the local SLURM cluster did not come up; logs in $dir/log" >&2
stop
exit 1
