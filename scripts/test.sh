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
# Debian's Chromium for the browser test of the Prefect UI (Playwright drives it; its own browser download is not used).
if [ ! -x /usr/bin/chromium ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt_chromium() { apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }
    apt_chromium 2>/dev/null || { apt-get update -qq >/dev/null && apt_chromium; }
fi
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
