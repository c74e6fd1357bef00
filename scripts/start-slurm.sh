#!/usr/bin/env bash
# Make sure a one-node Slurm cluster ("dendro") runs on this machine; start one by hand when none does.
#
# Idempotent: if `sinfo` shows our node idle/mixed/allocated and <state>/slurm/cluster.env says this
# script started the running slurmctld and slurmd, nothing is started (a drained/down node is
# resumed; daemons of ours that do not answer within 20 s are restarted). Otherwise the Debian packages are
# installed with apt-get when slurmctld (or slurmd/sbatch/munged) is missing, and munged, slurmctld
# and slurmd are started in the background, without systemd:
#
#   munged     as user munge, on the default socket /run/munge/munge.socket.2 (so every Slurm
#              command finds it), key <state>/slurm/munge/munge.key (a copy of /etc/munge/munge.key,
#              which is created when missing). An already answering munged is reused, not restarted.
#   slurmctld  SlurmctldHost=<hostname -s>(127.0.0.1), bound to 127.0.0.1 only
#   slurmd     NodeName=<hostname -s>, NodeAddr=127.0.0.1, bound to 127.0.0.1 only
#
# The configuration is written to <state>/slurm/slurm.conf and copied to /etc/slurm/slurm.conf, the
# packages' default location, so that sbatch/squeue/scontrol/scancel from any process (for example a
# Prefect worker without SLURM_CONF) find it. A slurm.conf there that this script did not write is
# first moved aside to slurm.conf.orig. Partitions: debug (default) and gpu, both on the one node, no
# time limit; no Gres (there are no GPUs). Finished jobs stay visible in `scontrol show job` for
# MinJobAge=300 s, and each finished job gets a line in <state>/slurm/jobcomp.log (no slurmdbd, so
# no sacct). Ports: 6817/6818 when free on 127.0.0.1, else the next free ones above.
#
# Files (all under <state>/slurm/): slurm.conf, cluster.env (what was started: PIDs, ports, node),
# spool/slurmctld (StateSaveLocation), spool/slurmd, log/{slurmctld,slurmd}.log, run/{slurmctld,slurmd}.pid,
# munge/{munge.key,munged.pid,munged.log,munged.seed}, jobcomp.log, apt-slurm.log.
# scripts/stop-slurm.sh stops the daemons recorded there.
#
# Ready means: the node is up in `sinfo` (idle, or mixed/allocated by jobs recovered from the state
# dir) and a probe `sbatch --wrap true` job completed. Right after slurmctld starts it schedules no
# batch job for about 3 s; the probe covers that. Jobs running while the daemons stop keep running
# (slurmstepd outlives slurmd) and are picked up again on the next start.
#
# Timing facts of Slurm 22.05 (measured here): jobs start on a ~1 s scheduler tick
# (sbatch -> RUNNING 0.2-1.0 s; about <CPUs> trivial jobs started per second). Time limits are
# whole minutes (--time=0:00:05 becomes 1 min) and are checked every 30 s (compiled in, no
# setting), so such a job ends TIMEOUT 60-90 s after it started. `sbatch --wait` polls after
# 2 s, 10 s, 42 s, ... (poll `scontrol show job` instead).
#
# Environment:
#   DENDRO_PREFECT_STATE          state dir (default: .state/ in the repo root)
#   DENDRO_PREFECT_SLURM_TIMEOUT  seconds to wait for the cluster to become ready (default 60)
set -euo pipefail

SCRIPT_NAME=start-slurm
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
TIMEOUT="${DENDRO_PREFECT_SLURM_TIMEOUT:-60}"
POLL_INTERVAL=0.2
CLUSTER=dendro
ETC_CONF=/etc/slurm/slurm.conf
MARKER="# dendro-prefect: written by scripts/start-slurm.sh"
MUNGE_SOCKET=/run/munge/munge.socket.2

# Every process (including ones that never see this script's environment) uses /etc/slurm/slurm.conf.
if [[ -n "${SLURM_CONF:-}" && "$SLURM_CONF" != "$ETC_CONF" ]]; then
    log "ignoring SLURM_CONF=$SLURM_CONF: this cluster's configuration lives in $ETC_CONF"
fi
unset SLURM_CONF

NODE="$(hostname -s)"
[[ -n "$NODE" ]] || die "hostname -s printed nothing"

mkdir -p "$STATE"
[[ -e "$STATE/.gitignore" ]] || printf '*\n' > "$STATE/.gitignore"   # keep logs, pids, keys out of git
STATE="$(cd "$STATE" && pwd)"
SDIR="$STATE/slurm"
mkdir -p "$SDIR"
ENVFILE="$SDIR/cluster.env"
CONF="$SDIR/slurm.conf"
CTLD_PIDFILE="$SDIR/run/slurmctld.pid"
SLURMD_PIDFILE="$SDIR/run/slurmd.pid"
MUNGE_DIR="$SDIR/munge"
MUNGED_PIDFILE="$MUNGE_DIR/munged.pid"
CTLD_LOG="$SDIR/log/slurmctld.log"
SLURMD_LOG="$SDIR/log/slurmd.log"
MUNGED_LOG="$MUNGE_DIR/munged.log"

# pid_is NAME PID: PID is alive and runs NAME (the Debian binaries are NAME-wlm behind symlinks).
pid_is() {
    local comm
    alive "$2" || return 1
    comm="$(cat "/proc/$2/comm" 2>/dev/null || true)"
    [[ "$comm" == "$1" || "$comm" == "$1-wlm" ]]
}
read_pid() { { tr -dc '0-9' < "$1"; } 2>/dev/null || true; }
recorded() { if [[ -r "$ENVFILE" ]]; then sed -n "s/^$1=//p" "$ENVFILE" | tail -n 1; fi; }

node_state() { timeout 10 sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1 || true; }
healthy_state() { case "$1" in idle|mixed|allocated|completing) return 0;; *) return 1;; esac; }

# --- already running? -------------------------------------------------------------------------------
ours_running() { pid_is slurmctld "$(recorded SLURMCTLD_PID)" && pid_is slurmd "$(recorded SLURMD_PID)"; }

describe() {
    log "cluster '$CLUSTER': node $NODE ($(node_state)), partitions: $(timeout 10 sinfo -h -o '%P' 2>/dev/null | paste -sd' ' -)"
    log "config $ETC_CONF (copy of $CONF); slurmctld PID $(recorded SLURMCTLD_PID) port $(recorded SLURMCTLD_PORT), slurmd PID $(recorded SLURMD_PID) port $(recorded SLURMD_PORT), munged PID $(recorded MUNGED_PID)"
}

check_running() {   # exit 0 if our cluster is up; die if a foreign one answers
    local st
    command -v sinfo >/dev/null 2>&1 || return 0
    [[ -r "$ETC_CONF" ]] || return 0
    if grep -qF "$MARKER" "$ETC_CONF" 2>/dev/null; then
        # Our configuration: only our daemons can answer (and asking sinfo when no slurmctld
        # listens costs ~9 s of connection retries), so look at their PIDs first.
        ours_running || return 0
        # A busy slurmctld may answer slowly and a node may be briefly not responding: give a
        # running cluster some time before restarting it (which would disturb its users).
        local deadline=$((SECONDS + 20)) resumed=""
        while :; do
            st="$(node_state)"
            if healthy_state "$st"; then
                log "the Slurm cluster started by this script already answers; nothing to start"
                describe
                exit 0
            fi
            if [[ -z "$resumed" && "$st" =~ ^(down|drain) ]]; then
                log "node $NODE is '$st' ($(timeout 10 sinfo -h -N -n "$NODE" -o %E 2>/dev/null | head -n 1)); resuming it"
                timeout 10 scontrol update NodeName="$NODE" State=RESUME || true
                resumed=yes
            fi
            if ((SECONDS >= deadline)) || ! ours_running; then break; fi
            sleep 1
        done
        log "our slurmctld/slurmd run but node $NODE is '${st:-not answering}'; restarting them"
        return 0
    fi
    # (a slurmctld that answers does so within a second; none answering costs the whole timeout)
    st="$(timeout 4 sinfo -h -o %T 2>/dev/null | head -n 1 || true)"
    [[ -z "$st" ]] || die "a Slurm cluster this script did not configure answers (state '$st', config $ETC_CONF); stop it first or use it as is"
}

check_running

# One starter at a time (fd 9 is closed for the daemons, so they do not keep the lock).
exec 9>"$SDIR/start.lock"
flock -w $((TIMEOUT + 60)) 9 || die "another start-slurm.sh holds $SDIR/start.lock"
check_running   # started meanwhile?

T_START="$(now)"

# --- install ------------------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 \
    || ! command -v sbatch >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "Slurm is missing and apt-get is not available to install it"
    log "installing munge slurmctld slurmd slurm-client with apt-get"
    t0="$(now)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client >"$SDIR/apt-slurm.log" 2>&1 \
        || { tail -n 20 "$SDIR/apt-slurm.log" >&2; die "apt-get install failed (log: $SDIR/apt-slurm.log)"; }
    log "installed Slurm $(slurmctld -V 2>/dev/null | awk '{print $2}') in $(since "$t0") s"
    hash -r
    for c in slurmctld slurmd sbatch munged; do command -v "$c" >/dev/null 2>&1 || die "installed, but $c is still not found"; done
fi
id munge >/dev/null 2>&1 || die "user munge does not exist (the munge package creates it)"

# --- stop leftovers of ours that are not healthy --------------------------------------------------------
stop_pid() {   # NAME PID
    local name="$1" pid="$2" deadline=$((SECONDS + 30))
    pid_is "$name" "$pid" || return 0
    log "stopping our unhealthy $name PID $pid"
    kill -TERM "$pid" 2>/dev/null || true
    while alive "$pid"; do
        ((SECONDS < deadline)) || die "$name PID $pid did not exit within 30 s after SIGTERM"
        sleep "$POLL_INTERVAL"
    done
}
for name in slurmd slurmctld; do
    upper="$(tr '[:lower:]' '[:upper:]' <<<"$name")"
    for pid in "$(recorded "${upper}_PID")" "$(read_pid "$SDIR/run/$name.pid")"; do
        stop_pid "$name" "$pid"
    done
done

mkdir -p "$SDIR/spool/slurmctld" "$SDIR/spool/slurmd" "$SDIR/log" "$SDIR/run"
rm -f "$CTLD_PIDFILE" "$SLURMD_PIDFILE"

# --- munge ------------------------------------------------------------------------------------------------
munge_answers() { command -v munge >/dev/null 2>&1 && timeout 5 munge --no-input --socket="$MUNGE_SOCKET" 2>/dev/null | timeout 5 unmunge --socket="$MUNGE_SOCKET" >/dev/null 2>&1; }

if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    chown munge:munge /etc/munge; chmod 0700 /etc/munge
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
fi
mkdir -p "$MUNGE_DIR"
chown munge:munge "$MUNGE_DIR"; chmod 0700 "$MUNGE_DIR"
if [[ ! -s "$MUNGE_DIR/munge.key" ]]; then
    install -o munge -g munge -m 0400 /etc/munge/munge.key "$MUNGE_DIR/munge.key"
fi
chown munge:munge "$MUNGE_DIR/munge.key"; chmod 0400 "$MUNGE_DIR/munge.key"
mkdir -p /run/munge
chown munge:munge /run/munge; chmod 0755 /run/munge

MUNGED_PID=""
if munge_answers; then
    p="$(read_pid "$MUNGED_PIDFILE")"
    if pid_is munged "$p"; then
        MUNGED_PID="$p"
        log "our munged PID $p already answers on $MUNGE_SOCKET"
    else
        log "a munged this script did not start answers on $MUNGE_SOCKET; using it (stop-slurm.sh will leave it alone)"
    fi
else
    p="$(read_pid "$MUNGED_PIDFILE")"
    if pid_is munged "$p"; then
        log "our munged PID $p does not answer; restarting it"
        stop_pid munged "$p"
    fi
    rm -f "$MUNGED_PIDFILE"
    t0="$(now)"
    # munged forks into the background and writes its PID file itself.
    setpriv --reuid=munge --regid=munge --init-groups \
        munged --socket="$MUNGE_SOCKET" --key-file="$MUNGE_DIR/munge.key" --pid-file="$MUNGED_PIDFILE" \
        --log-file="$MUNGED_LOG" --seed-file="$MUNGE_DIR/munged.seed" </dev/null >>"$MUNGE_DIR/munged.out" 2>&1 9>&- \
        || { tail -n 20 "$MUNGE_DIR/munged.out" "$MUNGED_LOG" >&2 2>/dev/null; die "munged failed to start"; }
    deadline=$((SECONDS + 15))
    until munge_answers; do
        ((SECONDS < deadline)) || { tail -n 20 "$MUNGED_LOG" >&2 2>/dev/null; die "munged does not answer on $MUNGE_SOCKET (log: $MUNGED_LOG)"; }
        sleep "$POLL_INTERVAL"
    done
    MUNGED_PID="$(read_pid "$MUNGED_PIDFILE")"
    log "munged PID ${MUNGED_PID:-?} answers after $(since "$t0") s"
fi

# --- configuration ------------------------------------------------------------------------------------------
port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null || return 1
    ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}
next_free_port() {   # first free port >= $1, skipping $2
    local p="$1"
    while ((p < 65535)); do
        if [[ "$p" != "${2:-}" ]] && port_free "$p"; then echo "$p"; return 0; fi
        p=$((p + 1))
    done
    return 1
}
CTLD_PORT="$(next_free_port 6817)" || die "no free TCP port for slurmctld"
SLURMD_PORT="$(next_free_port 6818 "$CTLD_PORT")" || die "no free TCP port for slurmd"

CPUS="$(nproc)"
# Socket/core/thread layout as slurmd sees it (else slurmd logs that it "reconfigured" the node);
# only when slurmd counts the same CPUs as nproc, otherwise just CPUs=<nproc>.
NODE_HW="CPUs=$CPUS"
hw="$(slurmd -C 2>/dev/null | head -n 1 || true)"
hw_val() { grep -o " $1=[0-9]*" <<<"$hw" | cut -d= -f2; }
if [[ "$(hw_val CPUs)" == "$CPUS" && "$(hw_val Boards)" == 1 && -n "$(hw_val SocketsPerBoard)" && -n "$(hw_val CoresPerSocket)" && -n "$(hw_val ThreadsPerCore)" ]]; then
    NODE_HW="CPUs=$CPUS SocketsPerBoard=$(hw_val SocketsPerBoard) CoresPerSocket=$(hw_val CoresPerSocket) ThreadsPerCore=$(hw_val ThreadsPerCore)"
fi
MEM_TOTAL="$(free -m | awk '/^Mem:/ {print $2}')"
REAL_MEMORY=$((MEM_TOTAL * 95 / 100))   # slurmd drains a node whose RealMemory exceeds what it finds

cat > "$CONF.tmp" <<EOF
$MARKER (state dir: $SDIR)
# Regenerated on every start; edits are lost. One node, no accounting daemon (no sacct).
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
# Bind slurmctld/slurmd to the configured address (127.0.0.1), not to all interfaces.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$SDIR/jobcomp.log
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
# Cores only: memory is not a consumable resource and is not enforced.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MinJobAge=300
ReturnToService=2
KillWait=5
MessageTimeout=10
InactiveLimit=0
MailProg=/bin/true
StateSaveLocation=$SDIR/spool/slurmctld
SlurmdSpoolDir=$SDIR/spool/slurmd
SlurmctldPidFile=$CTLD_PIDFILE
SlurmdPidFile=$SLURMD_PIDFILE
SlurmctldLogFile=$CTLD_LOG
SlurmdLogFile=$SLURMD_LOG
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeHostname=$NODE NodeAddr=127.0.0.1 $NODE_HW RealMemory=$REAL_MEMORY State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
mv "$CONF.tmp" "$CONF"

mkdir -p "$(dirname "$ETC_CONF")"
if [[ -e "$ETC_CONF" ]] && ! grep -qF "$MARKER" "$ETC_CONF"; then
    backup="$ETC_CONF.orig"
    [[ -e "$backup" ]] && backup="$ETC_CONF.orig.$(date +%Y%m%d%H%M%S)"
    log "moving the existing $ETC_CONF (not ours) to $backup"
    mv "$ETC_CONF" "$backup"
fi
cp "$CONF" "$ETC_CONF.tmp.$$" && chmod 0644 "$ETC_CONF.tmp.$$" && mv "$ETC_CONF.tmp.$$" "$ETC_CONF"
log "wrote $CONF and $ETC_CONF (node $NODE: $CPUS CPUs, RealMemory=$REAL_MEMORY MB; slurmctld port $CTLD_PORT, slurmd port $SLURMD_PORT)"

# --- start the daemons --------------------------------------------------------------------------------------------
LOG_OFFSET_CTLD="$(stat -c %s "$CTLD_LOG" 2>/dev/null || echo 0)"
LOG_OFFSET_SLURMD="$(stat -c %s "$SLURMD_LOG" 2>/dev/null || echo 0)"
show_logs() {
    log "--- last lines of $CTLD_LOG:"
    tail -c +$((LOG_OFFSET_CTLD + 1)) "$CTLD_LOG" 2>/dev/null | tail -n 25 >&2 || true
    log "--- last lines of $SLURMD_LOG:"
    tail -c +$((LOG_OFFSET_SLURMD + 1)) "$SLURMD_LOG" 2>/dev/null | tail -n 25 >&2 || true
    for f in "$SDIR/log/slurmctld.out" "$SDIR/log/slurmd.out"; do
        [[ -s "$f" ]] && { log "--- last lines of $f:"; tail -n 10 "$f" >&2; }
    done
    return 0
}
fail() { show_logs; die "$* (stop the daemons with scripts/stop-slurm.sh)"; }

write_envfile() {
    cat > "$ENVFILE.tmp" <<EOF
# Written by scripts/start-slurm.sh: the Slurm daemons it started (scripts/stop-slurm.sh stops these PIDs).
STARTED_AT=$(date -u +%FT%TZ)
CLUSTER=$CLUSTER
NODE=$NODE
SLURM_CONF=$ETC_CONF
SLURMCTLD_PORT=$CTLD_PORT
SLURMD_PORT=$SLURMD_PORT
SLURMCTLD_PID=${CTLD_PID:-}
SLURMD_PID=${SLURMD_PID:-}
MUNGED_PID=${MUNGED_PID:-}
READY=${READY:-no}
EOF
    mv "$ENVFILE.tmp" "$ENVFILE"
}

wait_pidfile() {   # NAME PIDFILE -> echoes the PID once the daemon wrote it
    local name="$1" f="$2" p deadline=$((SECONDS + 15))
    while ((SECONDS < deadline)); do
        p="$(read_pid "$f")"
        if pid_is "$name" "$p"; then echo "$p"; return 0; fi
        sleep 0.05
    done
    return 1
}

t_daemons="$(now)"
# Both fork into the background (own session) and write their PID files themselves; -i: do not
# refuse to start over state files from an older configuration.
slurmctld -i </dev/null >>"$SDIR/log/slurmctld.out" 2>&1 9>&- || fail "slurmctld failed to start"
CTLD_PID="$(wait_pidfile slurmctld "$CTLD_PIDFILE")" || fail "slurmctld wrote no live PID to $CTLD_PIDFILE"
write_envfile
slurmd -N "$NODE" </dev/null >>"$SDIR/log/slurmd.out" 2>&1 9>&- || fail "slurmd failed to start"
SLURMD_PID="$(wait_pidfile slurmd "$SLURMD_PIDFILE")" || fail "slurmd wrote no live PID to $SLURMD_PIDFILE"
write_envfile
log "slurmctld PID $CTLD_PID, slurmd PID $SLURMD_PID started in $(since "$t_daemons") s; waiting up to ${TIMEOUT}s for readiness"

# --- readiness --------------------------------------------------------------------------------------------------------
# Jobs recovered from the state dir (or submitted by others meanwhile) may keep the node mixed or
# allocated; that is healthy too.
deadline=$((SECONDS + TIMEOUT))
st=""
while :; do
    pid_is slurmctld "$CTLD_PID" || fail "slurmctld PID $CTLD_PID exited"
    pid_is slurmd "$SLURMD_PID" || fail "slurmd PID $SLURMD_PID exited"
    st="$(node_state)"
    healthy_state "$st" && break
    ((SECONDS < deadline)) || fail "node $NODE is not up after ${TIMEOUT}s (state: '${st:-no answer}')"
    sleep "$POLL_INTERVAL"
done
log "node $NODE $st after $(since "$t_daemons") s"

# The probe is polled with scontrol, not `sbatch --wait`: sbatch --wait checks the job after 2 s,
# then 8 s later, then every 32 s, so it would add up to 8 s to a job that took 3 s.
t_probe="$(now)"
probe_out="$SDIR/run/probe.out"
rc=0
timeout 30 sbatch --parsable -J dendro-slurm-probe -p debug -t 1 \
    --chdir="$SDIR/run" -o /dev/null -e /dev/null --wrap true >"$probe_out" 2>&1 9>&- || rc=$?
probe_id="$(grep -Eo '^[0-9]+' "$probe_out" | head -n 1 || true)"
if ((rc != 0)) || [[ -z "$probe_id" ]]; then
    cat "$probe_out" >&2
    fail "sbatch of the probe job failed (exit $rc)"
fi
job_field() { timeout 10 scontrol -o show job "$1" 2>/dev/null | grep -o " $2=[^ ]*" | cut -d= -f2 || true; }
busy=""
while :; do
    st="$(job_field "$probe_id" JobState)"
    case "$st" in
        COMPLETED) break;;
        PENDING|CONFIGURING|RUNNING|COMPLETING|"") ;;
        *) fail "probe job $probe_id ended $st";;
    esac
    if ((SECONDS >= deadline)); then
        reason="$(job_field "$probe_id" Reason)"
        scancel "$probe_id" 2>/dev/null || true
        # Every CPU taken by other (long) jobs: the scheduler works, the probe just cannot start.
        if [[ "$st" == PENDING && "$reason" =~ ^(Resources|Priority)$ ]] && [[ "$(node_state)" == allocated ]]; then
            busy="$reason"
            break
        fi
        fail "probe job $probe_id did not complete within ${TIMEOUT}s (state: ${st:-unknown}, reason: ${reason:-?})"
    fi
    sleep "$POLL_INTERVAL"
done
READY=yes
write_envfile
if [[ -n "$busy" ]]; then
    log "WARNING: probe job $probe_id could not start within ${TIMEOUT}s (reason $busy: every CPU is busy with other jobs); cancelled it, the daemons answer"
else
    log "probe job $probe_id completed $(since "$t_probe") s after submission"
fi
log "Slurm cluster ready $(since "$T_START") s after start (daemons to ready: $(since "$t_daemons") s)"
describe
