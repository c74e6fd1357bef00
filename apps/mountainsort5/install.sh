#!/usr/bin/env bash
# Create the app's own virtual environment (default: .venv in this directory, git-ignored) with the pinned
# requirements.txt. Idempotent: a stamp holding the hash of requirements.txt and the Python version makes a
# repeated run return at once; a changed requirements.txt reinstalls into the same venv.
#
#   bash apps/mountainsort5/install.sh
#
# Environment:
#   MOUNTAINSORT5_VENV   where the venv goes (default: <app dir>/.venv)
#   MOUNTAINSORT5_PYTHON the Python that creates it (default: python3; 3.11 is what the pins were checked on)
set -euo pipefail

APP_DIR="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
VENV="${MOUNTAINSORT5_VENV:-$APP_DIR/.venv}"
PYTHON="${MOUNTAINSORT5_PYTHON:-python3}"
REQUIREMENTS="$APP_DIR/requirements.txt"

command -v "$PYTHON" >/dev/null 2>&1 || { echo "install.sh: $PYTHON not found" >&2; exit 1; }
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
WANT="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1) python-$PYVER"
STAMP="$VENV/.requirements-installed"

mkdir -p "$VENV"
# One install at a time (tests may call this in parallel).
exec 9>"$VENV/.install.lock"
flock -w 900 9 || { echo "install.sh: timed out waiting for $VENV/.install.lock" >&2; exit 1; }

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    echo "install.sh: $VENV is up to date"
    exit 0
fi

t0=$(date +%s.%N)
# A venv of another Python (or a broken one) is made anew; one of the same Python is updated in place.
if [[ -e "$VENV/bin/python" ]] && \
   [[ "$("$VENV/bin/python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)" != "$PYVER" ]]; then
    echo "install.sh: $VENV is not a venv of Python $PYVER; making it anew"
    find "$VENV" -mindepth 1 -maxdepth 1 ! -name .install.lock -exec rm -rf {} +
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
rm -f "$STAMP"
LOG="$VENV/install.log"
echo "install.sh: installing $(grep -c '^[A-Za-z]' "$REQUIREMENTS") pinned requirements into $VENV (log: $LOG)"
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -r "$REQUIREMENTS" >"$LOG" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$LOG" | tail -n 20 >&2
    echo "install.sh: pip install failed (log: $LOG)" >&2
    exit 1
fi
"$VENV/bin/python" -c 'import dendro.sdk, h5py, pynwb, remfile, spikeinterface, mountainsort5' \
    || { echo "install.sh: the venv does not import its packages" >&2; exit 1; }
printf '%s' "$WANT" > "$STAMP"
echo "install.sh: done in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
