#!/usr/bin/env bash
# Sourced by the service scripts (start-/stop-dockerd, start-/stop-slurm, build-app-image): the repo
# root, the state directory, sbin on PATH (the daemons and debootstrap live there), logging and timing.
# Set SCRIPT_NAME before sourcing.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export STATE="${DENDRO_PREFECT_STATE:-$ROOT/.state}"

for d in /usr/local/sbin /usr/sbin /sbin; do
    case ":$PATH:" in *":$d:"*) ;; *) PATH="$PATH:$d";; esac
done
export PATH

log() { printf '[%s] %s\n' "$SCRIPT_NAME" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# Running, and not a zombie left unreaped by whatever adopted it.
alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }
