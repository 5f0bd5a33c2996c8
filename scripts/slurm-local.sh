#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to try and test hydra/launcher=submitit_slurm without a cluster.
#
#   scripts/slurm-local.sh start     # installs slurm-wlm and munge (apt-get) if missing, writes a slurm.conf for
#                                    # this host (all its cores and memory, partition `debug`, no accounting),
#                                    # starts munged, slurmctld and slurmd, and waits until `srun hostname` answers
#   scripts/slurm-local.sh status    # exit 0 and sinfo's line if it answers, else exit 1
#   scripts/slurm-local.sh env       # the exports its clients need: eval "$(scripts/slurm-local.sh env)"
#   scripts/slurm-local.sh stop      # cancels its jobs, stops the daemons, removes the state folder
#
# Everything (slurm.conf, munge key and socket, spool, state, logs in log/) lives in one folder,
# $SLURM_LOCAL_DIR (default ${TMPDIR:-/tmp}/prefit-slurm-UID); nothing under /etc is written. Clients find the
# cluster through SLURM_CONF (the `env` command); its bin/ holds a small `sacct` that answers from scontrol, since
# accounting is off and submitit asks sacct for job states. start and stop are idempotent. Needs root (slurmd
# runs jobs as their users). Other settings: SLURM_LOCAL_PARTITION (debug), SLURM_LOCAL_PORT (6817; slurmd takes
# the next), SLURM_LOCAL_TIMEOUT (seconds start waits for the cluster, 90).
# Exit status: 0 done; 1 the cluster did not come up (or status: it is not up); 2 bad usage, not root, or slurm
# and munge cannot be installed.
set -euo pipefail

die() { echo "slurm-local: $*" >&2; exit 2; }
usage="usage: scripts/slurm-local.sh start|stop|status|env"
[[ $# -eq 1 ]] || die "$usage"
command=$1
case $command in start | stop | status | env) ;; *) die "$usage" ;; esac

dir=${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/prefit-slurm-$(id -u)}
partition=${SLURM_LOCAL_PARTITION:-debug}
port=${SLURM_LOCAL_PORT:-6817}
wait_s=${SLURM_LOCAL_TIMEOUT:-90}
[[ $port =~ ^[0-9]+$ && $wait_s =~ ^[0-9]+$ ]] || die "SLURM_LOCAL_PORT and SLURM_LOCAL_TIMEOUT must be numbers"
[[ $partition =~ ^[A-Za-z0-9_-]+$ ]] || die "SLURM_LOCAL_PARTITION must be a plain name, not '$partition'"
conf=$dir/slurm.conf
export SLURM_CONF=$conf PATH=$dir/bin:$PATH

exports() { echo "export SLURM_CONF=$conf PATH=$dir/bin:\$PATH"; }

# the pid in a pid file, if that process still runs
alive() { local pid; pid=$(cat "$1" 2>/dev/null) && [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"; }

answers() { # the cluster is up: its node idle or busy, a job step runs
  [[ -f $conf ]] && alive "$dir/slurmctld.pid" >/dev/null && alive "$dir/slurmd.pid" >/dev/null \
    && timeout 20 srun --partition="$partition" --time=1 --quiet hostname >/dev/null 2>&1
}

stop() {
  if [[ -f $conf ]] && alive "$dir/slurmctld.pid" >/dev/null; then
    timeout 10 scancel --full --partition="$partition" >/dev/null 2>&1 || true
    for _ in $(seq 20); do # let the jobs' steps end while slurmd still tends them
      [[ -z $(timeout 5 squeue -h -t running,completing -o %i 2>/dev/null) ]] && break
      sleep 0.5
    done
  fi
  local name pid
  for name in slurmd slurmctld munged; do
    pid=$(alive "$dir/$name.pid") || continue
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  done
  # job steps of this cluster that outlived slurmd: slurmstepd processes working in its spool folder
  for pid in $(pgrep -x slurmstepd 2>/dev/null || true); do
    if [[ $(readlink "/proc/$pid/cwd" 2>/dev/null) == "$dir"/* ]]; then kill -9 "$pid" 2>/dev/null || true; fi
  done
  rm -rf "$dir"
}

install() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v srun >/dev/null || missing+=(slurm-client)
  command -v munged >/dev/null || missing+=(munge)
  [[ ${#missing[@]} -eq 0 ]] && return
  command -v apt-get >/dev/null || die "${missing[*]} missing and no apt-get to install them"
  echo "slurm-local: installing ${missing[*]} (apt-get)"
  local log
  log=$(mktemp)
  if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >"$log" 2>&1 \
    || { apt-get update -q >>"$log" 2>&1 \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$log" 2>&1; }; }
  then
    local why
    why=$(grep -E '^(E|W): ' "$log" | tail -1)
    rm -f "$log"
    die "cannot install ${missing[*]}: ${why:-apt-get failed}"
  fi
  rm -f "$log"
}

write_conf() {
  local host node
  host=$(hostname -s)
  # the node as slurmd sees it (CPUs, sockets, cores, threads, RealMemory), less 5% of the memory for the system
  node=$(slurmd -C | head -1 | sed -E 's/^NodeName=[^ ]+ //')
  local mem=${node##*RealMemory=}
  mem=${mem%% *}
  node=${node/RealMemory=$mem/RealMemory=$((mem * 95 / 100))}
  mkdir -p "$dir"/{bin,log,ctld,spool,munge}
  chmod 755 "$dir/munge" # the key inside is root's alone; the socket serves every user
  cat >"$conf" <<EOF
# written by scripts/slurm-local.sh: one node, no accounting, no cgroups
ClusterName=prefit-local
SlurmctldHost=$host
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job waits for its old credential to expire before it starts again (120 s by default)
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=30
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MailProg=/bin/true
# finished jobs stay visible to scontrol (and so to bin/sacct) for an hour
MinJobAge=3600
KillWait=10
SlurmdTimeout=60
NodeName=$host $node State=UNKNOWN
PartitionName=$partition Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  # submitit asks `sacct -o JobID,State,NodeList --parsable2 -j ID ...`; without accounting, scontrol answers
  cat >"$dir/bin/sacct" <<'EOF'
#!/usr/bin/env bash
# sacct for a cluster without accounting: JobID|State|NodeList of the jobs given with -j, from scontrol
ids=()
while [[ $# -gt 0 ]]; do
  case $1 in -j | --jobs) ids+=("${2//,/ }"); shift 2 ;; -j*) ids+=("${1#-j}"); shift ;; *) shift ;; esac
done
echo "JobID|State|NodeList"
for id in ${ids[@]+"${ids[@]}"}; do
  scontrol -o show job "$id" 2>/dev/null | awk '{
    delete f
    for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = substr($i, length(kv[1]) + 2) }
    id = f["JobId"]
    if (f["ArrayJobId"] != "") {
      task = f["ArrayTaskId"]; sub(/%.*/, "", task)
      id = f["ArrayJobId"] "_" (task ~ /[-,]/ ? "[" task "]" : task)
    }
    node = f["NodeList"] == "(null)" ? "" : f["NodeList"]
    print id "|" f["JobState"] "|" node
  }'
done
EOF
  chmod +x "$dir/bin/sacct"
}

start() {
  [[ $(id -u) -eq 0 ]] || die "needs root: slurmd runs each job as its user"
  if answers; then
    echo "slurm-local: already up (partition $partition); clients: $(exports)"
    return
  fi
  install
  stop # leftovers of an earlier start: begin from nothing
  write_conf
  [[ -f $dir/munge/munge.key ]] || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$dir/munge/munge.key"
  munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munge.seed" \
    || { echo "slurm-local: munged did not start (see $dir/log/munged.log)" >&2; exit 1; }
  slurmctld -f "$conf" -i || { echo "slurm-local: slurmctld did not start (see $dir/log/slurmctld.log)" >&2; exit 1; }
  slurmd -f "$conf" || { echo "slurm-local: slurmd did not start (see $dir/log/slurmd.log)" >&2; exit 1; }
  local deadline=$((SECONDS + wait_s))
  until answers; do
    if ((SECONDS >= deadline)); then
      echo "slurm-local: no answer from srun within ${wait_s} s (logs in $dir/log)" >&2
      exit 1
    fi
    sleep 1
  done
  echo "slurm-local: up, node $(hostname -s), partition $partition; clients: $(exports)"
}

case $command in
  start) start ;;
  stop)
    stop
    echo "slurm-local: stopped, $dir removed"
    ;;
  status)
    if answers; then
      echo "slurm-local: up; $(sinfo -h -o '%P %D %T %c CPUs %m MB')"
    else
      echo "slurm-local: not up ($dir)"
      exit 1
    fi
    ;;
  env) exports ;;
esac
