#!/usr/bin/env bash
# Install what the tests need and run them; CI runs exactly this.
# .venv holds dendro-prefect; .venv-sdk holds the real dendro 0.2.17 SDK that jobs run with.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[test]"
python3 -m venv .venv-sdk
.venv-sdk/bin/pip install --quiet --disable-pip-version-check "dendro==0.2.17"
exec .venv/bin/python -m pytest "$@"
