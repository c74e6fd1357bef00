#!/usr/bin/env bash
# Stop the Slurm daemons that scripts/start-slurm.sh started: slurmd, then slurmctld, then munged.
# Only the PIDs recorded in <state>/slurm/ (cluster.env and the daemons' PID files), and only while
# such a PID still runs that program. SIGTERM, then wait with a deadline. Nothing else is undone:
# /etc/slurm/slurm.conf, the munge key and the job state in <state>/slurm/spool stay, so the next
# start recovers queued jobs and job IDs keep counting up.
#
# Jobs still running are not cancelled: their slurmstepd processes outlive slurmd (Slurm's design)
# and a restarted slurmd picks them up again. Cancel them first (scancel) for a clean machine.
#
# Environment:
#   DENDRO_PREFECT_STATE              state dir (default: .state/ in the repo root)
#   DENDRO_PREFECT_SLURM_STOP_TIMEOUT seconds to wait for each daemon to exit (default 30)
set -euo pipefail

SCRIPT_NAME=stop-slurm
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SDIR="$STATE/slurm"
ENVFILE="$SDIR/cluster.env"
TIMEOUT="${DENDRO_PREFECT_SLURM_STOP_TIMEOUT:-30}"

read_pid() { { tr -dc '0-9' < "$1"; } 2>/dev/null || true; }
recorded() { if [[ -r "$ENVFILE" ]]; then sed -n "s/^$1=//p" "$ENVFILE" | tail -n 1; fi; }

if [[ ! -d "$SDIR" ]]; then
    log "no $SDIR; nothing to stop"
    exit 0
fi

failed=0
stop_one() {   # NAME PIDFILE ENVKEY
    local name="$1" pidfile="$2" key="$3" pid comm start deadline candidates=() seen=""
    candidates=("$(recorded "$key")" "$(read_pid "$pidfile")")
    for pid in "${candidates[@]}"; do
        [[ -n "$pid" && " $seen " != *" $pid "* ]] || continue
        seen="$seen $pid"
        if ! alive "$pid"; then
            log "$name PID $pid is not running"
            continue
        fi
        comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
        if [[ "$comm" != "$name" && "$comm" != "$name-wlm" ]]; then
            log "PID $pid is now '$comm', not $name (PID reused); not touching it"
            continue
        fi
        log "sending SIGTERM to $name PID $pid; waiting up to ${TIMEOUT}s"
        start=$SECONDS
        deadline=$((SECONDS + TIMEOUT))
        kill -TERM "$pid" 2>/dev/null || true
        while alive "$pid"; do
            if ((SECONDS >= deadline)); then
                log "ERROR: $name PID $pid still running after ${TIMEOUT}s; 'kill -KILL $pid' to force"
                failed=1
                return 0
            fi
            sleep 0.1
        done
        log "$name PID $pid stopped after $((SECONDS - start))s"
    done
    [[ -z "$pidfile" ]] || rm -f "$pidfile"
}

if [[ ! -e "$ENVFILE" && ! -e "$SDIR/run/slurmd.pid" && ! -e "$SDIR/run/slurmctld.pid" && ! -e "$SDIR/munge/munged.pid" ]]; then
    log "no Slurm daemons recorded in $SDIR; nothing to stop"
    exit 0
fi

stop_one slurmd "$SDIR/run/slurmd.pid" SLURMD_PID
stop_one slurmctld "$SDIR/run/slurmctld.pid" SLURMCTLD_PID
stop_one munged "$SDIR/munge/munged.pid" MUNGED_PID
((failed == 0)) || exit 1
rm -f "$ENVFILE"

# Job steps outlive slurmd by design; say so rather than kill them.
steps="$(pgrep -x slurmstepd 2>/dev/null | paste -sd' ' - || true)"
[[ -z "$steps" ]] || log "note: slurmstepd processes of running jobs remain (PIDs $steps); a restarted slurmd resumes them"
log "Slurm daemons stopped"
