#!/usr/bin/env bash
# Build a Docker image for a Dendro app written with the real dendro SDK, without any image registry.
#
#   bash scripts/build-app-image.sh APP_DIR TAG
#   e.g. bash scripts/build-app-image.sh apps/letter_count dendro-letter-count:local
#
# (a) The base image (dendro-python-base:bookworm) is made once, when `docker image inspect` does not
#     find it: debootstrap a Debian bookworm minbase with python3, python3-venv and ca-certificates
#     into a temp dir and `docker import` it (scripts/common.sh, ensure_base_image).
# (b) Wheels of dendro and its dependencies (and of the app's requirements.txt, when the app dir has
#     one, e.g. apps/mountainsort5) are downloaded on the host for the base image's Python, glibc and
#     CPU (checked inside the image), cached under <state>/wheels, and reused offline when the cache
#     already satisfies the requirements (scripts/common.sh, image_wheels).
# (c) scripts/app-image.Dockerfile is built with the classic builder (DOCKER_BUILDKIT=0) and
#     `--network none`: the venv goes to /opt/dendro-venv (first on PATH) and the app to /app (less
#     any .venv of the app dir).
#
# Needs a running engine: scripts/start-dockerd.sh.
#
# Environment:
#   DENDRO_PREFECT_STATE              state dir (default: .state/ in the repo root)
#   DENDRO_PREFECT_DENDRO_REQUIREMENT dendro requirement for the image (default dendro==0.2.17)
#   DENDRO_PREFECT_BASE_IMAGE         base image tag (default dendro-python-base:bookworm)
#   DEBOOTSTRAP_MIRROR                Debian mirror for debootstrap (default: debootstrap's own)
set -euo pipefail

SCRIPT_NAME=build-app-image
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DENDRO_REQUIREMENT="${DENDRO_PREFECT_DENDRO_REQUIREMENT:-dendro==0.2.17}"
DOCKERFILE="$ROOT/scripts/app-image.Dockerfile"

[[ $# -eq 2 ]] || { echo "usage: $0 APP_DIR TAG   (e.g. $0 apps/letter_count dendro-letter-count:local)" >&2; exit 2; }
APP_DIR="$1"
TAG="$2"
[[ -d "$APP_DIR" ]] || die "app dir '$APP_DIR' not found"
[[ -f "$APP_DIR/main.py" ]] || die "'$APP_DIR' has no main.py"
[[ -f "$DOCKERFILE" ]] || die "missing $DOCKERFILE"
APP_REQUIREMENTS=""
[[ -f "$APP_DIR/requirements.txt" ]] && APP_REQUIREMENTS="$(cd "$APP_DIR" && pwd)/requirements.txt"

timeout 10 docker info >/dev/null 2>&1 || die "no Docker engine answers 'docker info'; run scripts/start-dockerd.sh first"
export DOCKER_BUILDKIT=0   # buildx is not installed; the classic builder needs nothing else

image_state
trap cleanup EXIT
T_START="$(now)"
maketemp CTX app-ctx
mkdir -p "$CTX/app"

# The requirements the image's venv installs: dendro, plus the app's requirements.txt if it has one
# (always written to the context, empty but for a comment otherwise, so the Dockerfile can COPY it).
REQ_ARGS=("$DENDRO_REQUIREMENT")
WHAT="$DENDRO_REQUIREMENT"
if [[ -n "$APP_REQUIREMENTS" ]]; then
    cp "$APP_REQUIREMENTS" "$CTX/requirements.txt"
    REQ_ARGS+=(-r "$CTX/requirements.txt")
    WHAT="$DENDRO_REQUIREMENT + $(basename "$APP_DIR")/requirements.txt"
else
    printf '# the app has no requirements.txt\n' > "$CTX/requirements.txt"
fi

lock_image_deps
ensure_base_image                                   # (a)
image_wheels "$CTX/wheels" "$WHAT" "${REQ_ARGS[@]}"  # (b)
unlock_image_deps

# ---------------------------------------------------------------- (c) build
tar -C "$APP_DIR" --exclude=__pycache__ --exclude='*.pyc' --exclude=.git --exclude=./.venv -cf - . | tar -C "$CTX/app" -xf -
cp "$DOCKERFILE" "$CTX/Dockerfile"
BUILD_LOG="$STATE/logs/docker-build-${TAG//[^A-Za-z0-9_.-]/_}.log"
build_lock "$TAG"
t0="$(now)"
log "building $TAG from $APP_DIR (log: $BUILD_LOG)"
docker build --network none \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg "DENDRO_REQUIREMENT=$DENDRO_REQUIREMENT" \
    --label "dendro-prefect.app-dir=$(basename "$(cd "$APP_DIR" && pwd)")" \
    --label "dendro-prefect.dendro-requirement=$DENDRO_REQUIREMENT" \
    -t "$TAG" "$CTX" >"$BUILD_LOG" 2>&1 \
    || { tail -n 40 "$BUILD_LOG" >&2; die "docker build failed (log: $BUILD_LOG)"; }
log "built $TAG in $(since "$t0") s ($(grep -c 'Using cache' "$BUILD_LOG" || true) cached steps); size $(docker image inspect --format '{{.Size}}' "$TAG" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
log "done in $(since "$T_START") s"
