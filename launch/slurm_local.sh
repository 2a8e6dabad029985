#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying launch/slurm.sbatch and for CI.
#
#   sudo launch/slurm_local.sh start    # install slurm-wlm + munge if missing, configure, start
#   sbatch --ntasks=2 --cpus-per-task=1 --gpus-per-task=0 launch/slurm.sbatch --config=... --workdir=...
#   sudo launch/slurm_local.sh stop     # cancel jobs, stop the daemons, leave nothing running
#   launch/slurm_local.sh status        # the daemons' PIDs and `sinfo`
#
# One node named after this host (NodeAddr 127.0.0.1) with this machine's cores and memory,
# no GPUs, one partition `local`; slurmctld and slurmd run as root (as does the job), so the
# jobs can write wherever root can. Slurm's commands read /etc/slurm/slurm.conf, so that is
# where the config goes: a slurm.conf this script did not write (a real cluster's) is never
# overwritten. Everything else (state, spool, the daemons' logs) lives in $SLURM_LOCAL_DIR
# (default /var/tmp/alexnet_jax_slurm); `stop` keeps it for reading the logs.
#
# Needs root (apt-get, daemons). Process tracking is proctrack/linuxproc and task binding
# task/none: they need no cgroup setup, so the cluster starts in containers too (cgroups are
# what a production cluster would use; see README "Scaling out").
set -euo pipefail

STATE=${SLURM_LOCAL_DIR:-/var/tmp/alexnet_jax_slurm}
CONF=/etc/slurm/slurm.conf
MARKER="# written by alexnet_jax launch/slurm_local.sh"
PARTITION=local

log() { echo "slurm_local: $*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() {
  [[ $(id -u) -eq 0 ]] || die "run as root (sudo $0 $1): it installs packages and starts daemons."
}

install_packages() {
  local missing=()
  for tool in slurmctld slurmd sbatch munged; do
    command -v "$tool" >/dev/null 2>&1 || [[ -x /usr/sbin/$tool ]] || missing+=("$tool")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  command -v apt-get >/dev/null || die "${missing[*]} missing and no apt-get here: install Slurm and munge."
  log "installing slurm-wlm and munge (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # The packages' own service starts are refused in containers (policy-rc.d); we start the
  # daemons ourselves below.
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

# The pid in FILE, if that process is alive.
alive_pid() {
  local pid
  [[ -f $1 ]] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

write_config() {
  if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script (a real cluster's?); not touching it."
  fi
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  # slurmd's own view of the memory, less 1 GiB for the system (a node whose RealMemory is
  # larger than what slurmd finds is set DRAIN).
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  mem=$(( mem > 2048 ? mem - 1024 : mem ))
  mkdir -p /etc/slurm "$STATE"/{ctld,spool}
  cat > "$CONF" <<EOF
$MARKER (remove this file to let a real config in)
ClusterName=localcluster
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Seconds between a job's SIGTERM (time limit, scancel) and its SIGKILL.
KillWait=30
# Finished jobs stay visible to scontrol/squeue for 5 minutes.
MinJobAge=300
InactiveLimit=0
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=${PARTITION} Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
  # cgroup.conf is read by some plugins even when unused; an empty one silences them.
  [[ -f /etc/slurm/cgroup.conf ]] || echo "$MARKER" > /etc/slurm/cgroup.conf
}

start_munge() {
  # A munged already running (the machine's own) is used, and left running by `stop`.
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  local key=/etc/munge/munge.key
  if [[ ! -s $key ]]; then
    if command -v mungekey >/dev/null; then mungekey --create --keyfile="$key" --force
    else dd if=/dev/urandom of="$key" bs=1 count=1024 status=none; fi
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge "$key" /run/munge /var/log/munge /var/lib/munge
  chmod 0400 "$key"
  chmod 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  cp /run/munge/munged.pid "$STATE/munged.pid"  # ours: `stop` ends it
  munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)."
}

wait_node_idle() {
  local host state
  host=$(hostname -s)
  for _ in $(seq 1 60); do
    state=$(sinfo -h -n "$host" -o '%T' 2>/dev/null || true)
    case $state in
      idle|mixed|allocated) return 0 ;;
      down*|drain*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.5
  done
  die "the node did not come up (state '${state:-none}'); see $STATE/slurmd.log and $STATE/slurmctld.log."
}

start() {
  need_root start
  install_packages
  write_config
  start_munge
  if ! alive_pid "$STATE/slurmctld.pid" >/dev/null; then
    # -c: clear the state an earlier run saved (a fresh cluster every start).
    /usr/sbin/slurmctld -c || die "slurmctld did not start; see $STATE/slurmctld.log."
  fi
  if ! alive_pid "$STATE/slurmd.pid" >/dev/null; then
    /usr/sbin/slurmd || die "slurmd did not start; see $STATE/slurmd.log."
  fi
  wait_node_idle
  log "running: partition '$PARTITION', node $(hostname -s), $(nproc) CPUs (logs in $STATE)."
}

# Sends SIGTERM to the daemon in PIDFILE and waits up to 10 s, then SIGKILL.
stop_daemon() {
  local pid
  pid=$(alive_pid "$1") || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

stop() {
  need_root stop
  if alive_pid "$STATE/slurmctld.pid" >/dev/null; then
    scancel --full --quiet --state=pending,running,suspended 2>/dev/null || true
    scancel --full --quiet --user=root 2>/dev/null || true
    # Jobs get SIGTERM, then SIGKILL after KillWait; wait for them to leave.
    for _ in $(seq 1 80); do
      [[ -z $(squeue -h -t running,completing,pending -o %i 2>/dev/null) ]] && break
      sleep 0.5
    done
  fi
  # slurmd first: it ends the steps it still runs (slurmstepd) when it goes.
  stop_daemon "$STATE/slurmd.pid"
  stop_daemon "$STATE/slurmctld.pid"
  local leftover
  leftover=$(pgrep -x slurmstepd || true)
  if [[ -n $leftover ]]; then  # this node's steps (a real cluster's config is never ours)
    log "ending leftover job steps: $leftover"
    kill -KILL $leftover 2>/dev/null || true
  fi
  stop_daemon "$STATE/munged.pid"
  rm -f "$STATE/munged.pid"
  log "stopped (logs kept in $STATE)."
}

status() {
  local ctld slurmd
  ctld=$(alive_pid "$STATE/slurmctld.pid" || echo none)
  slurmd=$(alive_pid "$STATE/slurmd.pid" || echo none)
  echo "slurmctld: $ctld  slurmd: $slurmd  munged: $(alive_pid "$STATE/munged.pid" || echo 'none started here')"
  [[ $ctld != none ]] && sinfo
  return 0
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
