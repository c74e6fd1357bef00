#!/usr/bin/env bash
# Install what the tests need and run them; CI runs exactly this.
# .venv holds dendro-prefect; .venv-sdk holds the real dendro 0.2.17 SDK that jobs run with.
# A docker engine is started (and stopped again) when none answers; the tests start everything else.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[test]"
python3 -m venv .venv-sdk
.venv-sdk/bin/pip install --quiet --disable-pip-version-check "dendro==0.2.17"
started_dockerd=""
if ! timeout 10 docker info >/dev/null 2>&1; then
    bash scripts/start-dockerd.sh
    started_dockerd=1
fi
stop_dockerd() { if [ -n "$started_dockerd" ]; then bash scripts/stop-dockerd.sh; fi; }
trap stop_dockerd EXIT
.venv/bin/python -m pytest "$@"
