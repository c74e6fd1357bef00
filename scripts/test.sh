#!/usr/bin/env bash
# Install what the tests need and run them; CI runs exactly this.
# .venv holds dendro-prefect; .venv-sdk holds the real dendro 0.2.17 SDK that jobs run with; .venv-central the
# real dendro 0.2.17 central that some tests run against.
# A docker engine and a one-node Slurm cluster are started (and stopped again) where none answers;
# the tests start everything else (Prefect server, central stand-in, workers).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[test]"
python3 -m venv .venv-sdk
.venv-sdk/bin/pip install --quiet --disable-pip-version-check "dendro==0.2.17"
# The real Dendro 0.2.17 central's own routers (extra `api`) with an in-memory MongoDB, for
# tests/e2e/test_real_central.py and tests/integration/test_central_contract.py (see tests/real_central/serve.py).
python3 -m venv .venv-central
.venv-central/bin/pip install --quiet --disable-pip-version-check "dendro[api]==0.2.17" "mongomock-motor==0.0.36" uvicorn
# The spike-sorting app's venv and image take a minute or two each: made in the background while the
# first tests run (the tests ask for them again and wait for these; see tests/e2e/test_spike_sorting.py).
# Each in a process group of its own, stopped with the script if still running.
mkdir -p .state
preparing=()
prepare() { local log="$1"; shift; setsid "$@" > ".state/$log" 2>&1 & preparing+=($!); }
prepare mountainsort5-install.log bash apps/mountainsort5/install.sh
# Debian's Chromium for the browser test of the Prefect UI (Playwright drives it; its own browser download is not used).
if [ ! -x /usr/bin/chromium ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt_chromium() { apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }
    apt_chromium 2>/dev/null || { apt-get update -qq >/dev/null && apt_chromium; }
fi
# Debian's PostgreSQL: tests/e2e/test_pool_limit.py runs a Prefect server on a cluster of its own
# (dendro_prefect.embedded.postgres_database). Debian's Redis: each Prefect server of the tests keeps its
# background task queue in a Redis of its own (embedded.prefect_server). Nothing is started here.
packages=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || packages+=(postgresql)
command -v redis-server >/dev/null || packages+=(redis-server)
if [ ${#packages[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt_servers() { apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "${packages[@]}" >/dev/null; }
    apt_servers 2>/dev/null || { apt-get -o DPkg::Lock::Timeout=120 update -qq >/dev/null && apt_servers; }
fi
started=()
stop_started() {
    for pid in "${preparing[@]}"; do kill -- "-$pid" 2>/dev/null || true; done
    for service in "${started[@]}"; do bash "scripts/stop-$service.sh" || true; done
}
trap stop_started EXIT
if ! timeout 10 docker info >/dev/null 2>&1; then
    bash scripts/start-dockerd.sh
    started+=(dockerd)
fi
prepare mountainsort5-image.log bash scripts/build-app-image.sh apps/mountainsort5 dendro-mountainsort5:local
if ! timeout 10 sinfo >/dev/null 2>&1; then
    bash scripts/start-slurm.sh
    started+=(slurm)
fi
# Independent modules side by side, in two processes (tests/conftest.py keeps a module's tests, and the Slurm
# modules, in one): on this 2-core machine more processes only slow each test down. PYTEST_PROCESSES=0 runs the
# suite in this process.
.venv/bin/python -m pytest -n "${PYTEST_PROCESSES:-2}" "$@"
