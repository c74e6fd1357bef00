#!/usr/bin/env bash
# The embedded default: install into local virtual environments, then run one real Dendro job.
# .venv holds dendro-prefect; .venv-sdk holds the real dendro 0.2.17 SDK that the job's app uses.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e .
python3 -m venv .venv-sdk
.venv-sdk/bin/pip install --quiet --disable-pip-version-check "dendro==0.2.17"
exec .venv/bin/dendro-prefect demo "$@"
