#!/usr/bin/env bash
# Install what the tests need and run them; CI runs exactly this.
# .venv holds dendro-prefect; .venv-sdk holds the real dendro 0.2.17 SDK that jobs run with, .venv-sdk06 the
# dendro 0.6.22 SDK of Dendro 0.6 jobs; .venv-central the real dendro 0.2.17 central that some tests run against.
# A docker engine and a one-node Slurm cluster are started (and stopped again) where none answers;
# the tests start everything else (Prefect server, central stand-in, workers).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .state
# Steps in the background, each in a process group of its own (stopped with the script if still running) and
# logging to .state/: `prepare` for what the tests wait for themselves, `install_first` for what they need
# before they start.
preparing=()
started=()  # the services this script started, stopped at its end
stop_started() {
    for pid in "${preparing[@]}"; do kill -- "-$pid" 2>/dev/null || true; done
    for service in "${started[@]}"; do bash "scripts/stop-$service.sh" || true; done
}
trap stop_started EXIT
prepare() { local log="$1"; shift; setsid "$@" > ".state/$log" 2>&1 & preparing+=($!); }
installing=()
install_first() { local log="$1"; shift; prepare "$log" bash -c '"$@"' install_first "$@"; installing+=("$!:$log"); }
installed() {
    for entry in "${installing[@]}"; do
        wait "${entry%%:*}" || { echo "scripts/test.sh: ${entry#*:} failed; it ends with:" >&2; tail -n 20 ".state/${entry#*:}" >&2; exit 1; }
    done
}
# Debian's packages, in one apt-get: Chromium for the browser test of the Prefect UI (Playwright drives it; its
# own browser download is not used); Redis, where each Prefect server of the tests keeps its background task queue
# (embedded.prefect_server); Slurm and debootstrap, which scripts/start-slurm.sh and scripts/build-app-image.sh
# would otherwise install one after the other; docker-compose (1.29), which tests/e2e/test_compose.py runs
# deployments/compose/compose.yaml with. Nothing is started here.
debian_packages() {
    local packages=()
    [ -x /usr/bin/chromium ] || packages+=(chromium chromium-driver)
    command -v redis-server >/dev/null || packages+=(redis-server)
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null || packages+=(munge slurmctld slurmd slurm-client)
    command -v debootstrap >/dev/null || packages+=(debootstrap)
    command -v docker-compose >/dev/null || packages+=(docker-compose)
    [ ${#packages[@]} -gt 0 ] || return 0
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "${packages[@]}" \
        || { apt-get -o DPkg::Lock::Timeout=120 update -qq && apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "${packages[@]}"; }
}
venv() { local dir="$1"; shift; python3 -m venv "$dir" && "$dir/bin/pip" install --quiet --disable-pip-version-check "$@"; }
export -f debian_packages venv
# Everything that only downloads and unpacks runs side by side: the network, not the 2 cores, is what it waits for.
install_first apt.log debian_packages
install_first venv.log venv .venv -e ".[test]"
# .venv-sdk: the dendro SDK, and with its compute_resource extra the original daemon (`dendro start-compute-resource`),
# which tests/e2e/test_switch_from_daemon.py runs.
install_first venv-sdk.log venv .venv-sdk "dendro[compute_resource]==0.2.17"
# .venv-sdk06: the dendro 0.6.22 SDK that Dendro 0.6 jobs run with (tests/integration/test_sdk06_job.py). A job
# needs no pubnub (only the 0.6 daemon, which we do not run, subscribes).
install_first venv-sdk06.log venv .venv-sdk06 "dendro==0.6.22"
# The real Dendro 0.2.17 central's own routers (extra `api`) with an in-memory MongoDB, for
# tests/e2e/test_real_central.py and tests/integration/test_central_contract.py (see tests/real_central/serve.py).
install_first venv-central.log venv .venv-central "dendro[api]==0.2.17" "mongomock-motor==0.0.36" uvicorn
# The spike-sorting app's venv and image take a minute or two each: made in the background while the
# first tests run (the tests ask for them again and wait for these; see tests/e2e/test_spike_sorting.py).
prepare mountainsort5-install.log bash apps/mountainsort5/install.sh
installed
if ! timeout 10 docker info >/dev/null 2>&1; then
    bash scripts/start-dockerd.sh
    started+=(dockerd)
fi
# The letter_count image first: the docker, Slurm-docker, apptainer and compose tests wait for it.
prepare letter-count-image.log bash scripts/build-app-image.sh apps/letter_count dendro-letter-count:local
# The Dendro 0.6 app's image, with the dendro 0.6.22 SDK (tests/e2e/test_v06_docker.py).
prepare hello-world-image.log env DENDRO_PREFECT_DENDRO_REQUIREMENT=dendro==0.6.22 \
    bash scripts/build-app-image.sh apps/hello_world dendro-hello-world:local
prepare mountainsort5-image.log bash scripts/build-app-image.sh apps/mountainsort5 dendro-mountainsort5:local
# The images of deployments/compose/compose.yaml, likewise (tests/e2e/test_compose.py asks for them again and waits).
prepare server-images.log bash scripts/build-server-images.sh
if ! timeout 10 sinfo >/dev/null 2>&1; then
    bash scripts/start-slurm.sh
    started+=(slurm)
fi
# pytest's temporary trees under a root of this script's own: a pytest session started alongside (a developer's)
# resets the mode of its default root, /tmp/pytest-of-<user>, to 0700, and PostgreSQL run as root by the tests'
# Prefect servers under it then PANICs (see dendro_prefect/prefect_database.py).
export PYTEST_DEBUG_TEMPROOT="${PYTEST_DEBUG_TEMPROOT:-/tmp/dendro-prefect-tests}"
mkdir -p "$PYTEST_DEBUG_TEMPROOT"
# Independent modules side by side, in four processes (tests/conftest.py keeps a module's tests, and the Slurm
# modules, in one): the tests mostly wait on servers, apps and polls, so one process keeps a quarter of this
# 2-core machine busy; three kept 60 % busy and took the suite from 17.3 min (two) to 12.9 min of pytest; with the
# suite grown since, four took it from 18.0 to 16.7 min (fresh clones, 795 tests).
# PYTEST_PROCESSES=0 runs the suite in this process.
.venv/bin/python -m pytest -n "${PYTEST_PROCESSES:-4}" "$@"
