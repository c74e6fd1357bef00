#!/usr/bin/env bash
# Stop the dockerd that scripts/start-dockerd.sh started: only the PID recorded in
# <state>/dockerd.pid, and only if that PID is still a dockerd. SIGTERM, then wait with a deadline.
#
# Environment:
#   DENDRO_PREFECT_STATE               state dir (default: .state/ in the repo root)
#   DENDRO_PREFECT_DOCKERD_STOP_TIMEOUT seconds to wait for dockerd to exit (default 30;
#                                       dockerd itself gives running containers 15 s)
set -euo pipefail

SCRIPT_NAME=stop-dockerd
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PIDFILE="$STATE/dockerd.pid"
TIMEOUT="${DENDRO_PREFECT_DOCKERD_STOP_TIMEOUT:-30}"

if [[ ! -s "$PIDFILE" ]]; then
    log "no dockerd recorded in $PIDFILE; nothing to stop"
    exit 0
fi
pid="$(tr -dc '0-9' < "$PIDFILE")"
if [[ -z "$pid" ]] || ! alive "$pid"; then
    log "recorded dockerd PID ${pid:-?} is not running; removing stale $PIDFILE"
    rm -f "$PIDFILE"
    exit 0
fi
comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
if [[ "$comm" != "dockerd" ]]; then
    log "PID $pid in $PIDFILE is now '$comm', not dockerd (PID reused); not touching it, removing stale $PIDFILE"
    rm -f "$PIDFILE"
    exit 0
fi

log "sending SIGTERM to dockerd PID $pid; waiting up to ${TIMEOUT}s"
start=$SECONDS
kill -TERM "$pid"
deadline=$((SECONDS + TIMEOUT))
while alive "$pid"; do
    if ((SECONDS >= deadline)); then
        log "ERROR: dockerd PID $pid still running after ${TIMEOUT}s (log: $STATE/dockerd.log); 'kill -KILL $pid' to force"
        exit 1
    fi
    sleep 0.2
done
rm -f "$PIDFILE"   # dockerd removes it on a clean exit; make sure
log "dockerd PID $pid stopped after $((SECONDS - start))s"
