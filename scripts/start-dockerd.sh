#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine; start one by hand when none does.
#
# Idempotent: if `docker info` already works, nothing is started (the engine in use is printed).
# Otherwise docker.io is installed with apt-get when `dockerd` (or any docker client) is missing,
# and dockerd is started in the background, unix socket only (the default; no TCP listener),
# without systemd. Its log goes to <state>/dockerd.log and its PID to <state>/dockerd.pid
# (dockerd maintains that file itself through --pidfile); scripts/stop-dockerd.sh stops it.
#
# Note: a Docker client may exist without an engine (this image ships /usr/local/bin/docker,
# a client only), so `docker --version` answering proves nothing; only `docker info` does.
#
# Environment:
#   DENDRO_PREFECT_STATE            state dir (default: .state/ in the repo root)
#   DENDRO_PREFECT_DOCKERD_NETWORK  none (default) | bridge | auto
#       none:   --bridge=none --iptables=false --ip-forward=false. No docker0 bridge, no
#               iptables/NAT rules, no sysctl changes on the host; works in sandboxes where
#               bridges or iptables are unavailable. Containers must use `--network host`
#               (ours do) or get loopback only; builds run with `--network none`.
#       bridge: Docker's default networking (docker0 + iptables NAT).
#       auto:   try bridge; if dockerd dies while starting, retry as none.
#   DENDRO_PREFECT_DOCKERD_ARGS     extra dockerd arguments (word-split)
#   DENDRO_PREFECT_DOCKERD_TIMEOUT  seconds to wait for the engine to answer (default 60)
set -euo pipefail

SCRIPT_NAME=start-dockerd
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
NETWORK_MODE="${DENDRO_PREFECT_DOCKERD_NETWORK:-none}"
TIMEOUT="${DENDRO_PREFECT_DOCKERD_TIMEOUT:-60}"
POLL_INTERVAL=0.2

case "$NETWORK_MODE" in none|bridge|auto) ;; *) die "DENDRO_PREFECT_DOCKERD_NETWORK must be none, bridge or auto (got '$NETWORK_MODE')";; esac

engine_answers() { command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; }

describe_engine() {
    local server client
    server="$(timeout 10 docker info --format '{{.ServerVersion}} (storage {{.Driver}}, cgroup v{{.CgroupVersion}}, {{.OperatingSystem}})' 2>/dev/null || echo '?')"
    client="$(docker version --format '{{.Client.Version}} (API {{.Client.APIVersion}})' 2>/dev/null || echo '?')"
    log "engine: Docker ${server}; client $(command -v docker) ${client}; endpoint ${DOCKER_HOST:-unix:///var/run/docker.sock}"
}

if engine_answers; then
    log "a Docker engine already answers; nothing to start"
    describe_engine
    exit 0
fi

if [[ -n "${DOCKER_HOST:-}" && "${DOCKER_HOST}" != "unix:///var/run/docker.sock" ]]; then
    die "DOCKER_HOST=${DOCKER_HOST} does not answer; this script only starts a local dockerd on the default unix socket (unset DOCKER_HOST to use it)"
fi

mkdir -p "$STATE"
[[ -e "$STATE/.gitignore" ]] || printf '*\n' > "$STATE/.gitignore"   # keep logs, pids, wheels out of git
STATE="$(cd "$STATE" && pwd)"
PIDFILE="$STATE/dockerd.pid"
LOGFILE="$STATE/dockerd.log"

# One starter at a time (fd 9 is closed for dockerd itself, so it does not keep the lock).
exec 9>"$STATE/dockerd.lock"
flock -w $((TIMEOUT + 30)) 9 || die "another start-dockerd.sh holds $STATE/dockerd.lock"
if engine_answers; then
    log "a Docker engine answers now (started meanwhile); nothing to start"
    describe_engine
    exit 0
fi

find_dockerd() { command -v dockerd 2>/dev/null || true; }

DOCKERD="$(find_dockerd)"
if [[ -z "$DOCKERD" ]] || ! command -v docker >/dev/null 2>&1; then
    if command -v docker >/dev/null 2>&1; then
        log "found a Docker client without an engine: $(command -v docker) ($(docker --version 2>/dev/null || echo '?')); installing docker.io for dockerd"
    else
        log "no Docker client and no dockerd; installing docker.io"
    fi
    command -v apt-get >/dev/null 2>&1 || die "dockerd is missing and apt-get is not available to install docker.io"
    t0="$(now)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends docker.io >"$STATE/apt-docker.io.log" 2>&1 \
        || { tail -n 20 "$STATE/apt-docker.io.log" >&2; die "apt-get install docker.io failed (log: $STATE/apt-docker.io.log)"; }
    log "installed docker.io in $(since "$t0") s"
    hash -r
    DOCKERD="$(find_dockerd)"
    [[ -n "$DOCKERD" ]] || die "docker.io is installed but dockerd is still not found"
fi

pid_is_dockerd() { [[ -n "${1:-}" && -r "/proc/$1/comm" && "$(cat "/proc/$1/comm" 2>/dev/null)" == "dockerd" ]]; }

# Poll `docker info` until it answers, the deadline passes, or process $1 dies.
# Returns 0 when up, 1 on timeout, 2 when the process died.
wait_for_engine() {
    local pid="$1" deadline=$((SECONDS + TIMEOUT))
    while ((SECONDS < deadline)); do
        engine_answers && return 0
        kill -0 "$pid" 2>/dev/null || return 2
        sleep "$POLL_INTERVAL"
    done
    engine_answers && return 0
    return 1
}

# A dockerd may already be running but not answering yet (starting up): wait for it, don't start a second.
existing=""
for f in "$PIDFILE" /var/run/docker.pid; do
    p="$(cat "$f" 2>/dev/null || true)"
    if pid_is_dockerd "$p"; then existing="$p"; break; fi
done
if [[ -n "$existing" ]]; then
    log "dockerd PID $existing is running but not answering yet; waiting up to ${TIMEOUT}s"
    rc=0; wait_for_engine "$existing" || rc=$?
    ((rc == 0)) || die "dockerd PID $existing did not answer within ${TIMEOUT}s (log: $LOGFILE if it is ours)"
    describe_engine
    exit 0
fi
rm -f "$PIDFILE"   # stale: dockerd refuses to start over a pid file naming a live (reused) PID

start_dockerd() {   # $1 = network mode (none|bridge); sets STARTED_PID
    local mode="$1" args=(--pidfile "$PIDFILE")
    if [[ "$mode" == none ]]; then
        args+=(--bridge=none --iptables=false --ip-forward=false)
    fi
    # shellcheck disable=SC2206
    args+=(${DENDRO_PREFECT_DOCKERD_ARGS:-})
    printf '\n=== %s starting: %s %s\n' "$(date -u +%FT%TZ)" "$DOCKERD" "${args[*]}" >>"$LOGFILE"
    log "starting $DOCKERD ${args[*]} (network mode: $mode; log: $LOGFILE)"
    # setsid: own session, so the engine outlives the shell that started it.
    setsid "$DOCKERD" "${args[@]}" </dev/null >>"$LOGFILE" 2>&1 9>&- &
    STARTED_PID=$!
}

LOG_OFFSET="$(stat -c %s "$LOGFILE" 2>/dev/null || echo 0)"
new_log_lines() { tail -c +$((LOG_OFFSET + 1)) "$LOGFILE" | grep -v '^$' | tail -n "$1"; }
t0="$(now)"
first_mode="$NETWORK_MODE"; [[ "$first_mode" == auto ]] && first_mode=bridge
start_dockerd "$first_mode"
rc=0; wait_for_engine "$STARTED_PID" || rc=$?
if ((rc == 2)) && [[ "$NETWORK_MODE" == auto ]]; then
    log "dockerd with default bridge networking exited while starting (last log lines below); retrying without bridge/iptables"
    new_log_lines 5 >&2
    start_dockerd none
    rc=0; wait_for_engine "$STARTED_PID" || rc=$?
fi
if ((rc != 0)); then
    new_log_lines 25 >&2
    if ((rc == 2)); then
        die "dockerd exited while starting (log: $LOGFILE)"
    fi
    die "dockerd (PID $STARTED_PID) did not answer 'docker info' within ${TIMEOUT}s (log: $LOGFILE); stop it with scripts/stop-dockerd.sh"
fi

recorded="$(cat "$PIDFILE" 2>/dev/null || true)"
if [[ "$recorded" != "$STARTED_PID" ]]; then
    # dockerd writes its pid file early in its start; fall back to our own record if it did not.
    pid_is_dockerd "$recorded" || { echo "$STARTED_PID" > "$PIDFILE"; recorded="$STARTED_PID"; }
fi
log "dockerd answers after $(since "$t0") s; PID $recorded recorded in $PIDFILE"
describe_engine
