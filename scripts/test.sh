#!/usr/bin/env bash
# Install what the tests need and run them; CI runs exactly this.
# .venv holds dendro-prefect; .venv-sdk holds the real dendro 0.2.17 SDK that jobs run with.
# A docker engine and a one-node Slurm cluster are started (and stopped again) where none answers;
# the tests start everything else (Prefect server, central stand-in, workers).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[test]"
python3 -m venv .venv-sdk
.venv-sdk/bin/pip install --quiet --disable-pip-version-check "dendro==0.2.17"
started=()
stop_started() { for service in "${started[@]}"; do bash "scripts/stop-$service.sh" || true; done; }
trap stop_started EXIT
if ! timeout 10 docker info >/dev/null 2>&1; then
    bash scripts/start-dockerd.sh
    started+=(dockerd)
fi
if ! timeout 10 sinfo >/dev/null 2>&1; then
    bash scripts/start-slurm.sh
    started+=(slurm)
fi
.venv/bin/python -m pytest "$@"
