#!/usr/bin/env bash
# The embedded default: install into local virtual environments, then run one real Dendro job.
# .venv holds dendro-prefect; .venv-sdk the real dendro 0.2.17 SDK that the job's app uses, or with `--dendro 0.6`
# .venv-sdk06 the dendro 0.6.22 SDK.
set -euo pipefail
cd "$(dirname "$0")/.."
case " $* " in
    *" --dendro 0.6 "* | *" --dendro=0.6 "*) sdk_venv=.venv-sdk06 sdk="dendro==0.6.22" ;;
    *) sdk_venv=.venv-sdk sdk="dendro==0.2.17" ;;
esac
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e .
python3 -m venv "$sdk_venv"
"$sdk_venv/bin/pip" install --quiet --disable-pip-version-check "$sdk"
exec .venv/bin/dendro-prefect demo --sdk-venv "$sdk_venv" "$@"
