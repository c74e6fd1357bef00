#!/usr/bin/env bash
# Build a Docker image for a Dendro app written with the real dendro SDK, without any image registry.
#
#   bash scripts/build-app-image.sh APP_DIR TAG
#   e.g. bash scripts/build-app-image.sh apps/letter_count dendro-letter-count:local
#
# (a) The base image (dendro-python-base:bookworm) is made once, when `docker image inspect` does not
#     find it: debootstrap a Debian bookworm minbase with python3, python3-venv and ca-certificates
#     into a temp dir and `docker import` it.
# (b) Wheels of dendro and its dependencies (and of the app's requirements.txt, when the app dir has
#     one, e.g. apps/mountainsort5) are downloaded on the host for the base image's Python, glibc and
#     CPU (checked inside the image), cached under <state>/wheels, and reused offline when the cache
#     already satisfies the requirements.
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
BASE_IMAGE="${DENDRO_PREFECT_BASE_IMAGE:-dendro-python-base:bookworm}"
SUITE=bookworm
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

mkdir -p "$STATE"
[[ -e "$STATE/.gitignore" ]] || printf '*\n' > "$STATE/.gitignore"
STATE="$(cd "$STATE" && pwd)"
mkdir -p "$STATE/logs"

TMPDIRS=()
cleanup() { local d; for d in "${TMPDIRS[@]}"; do [[ -n "$d" ]] && rm -rf "$d"; done; }
trap cleanup EXIT
# maketemp VAR NAME: make a temp dir, removed on exit, and store its path in VAR (no subshell, so
# the cleanup list sees it).
maketemp() { local d; d="$(mktemp -d "${TMPDIR:-/tmp}/dendro-$2.XXXXXX")"; TMPDIRS+=("$d"); printf -v "$1" '%s' "$d"; }

T_START="$(now)"
# Serialize the base image and wheel cache steps between concurrent builds.
exec 8>"$STATE/build-app-image.lock"
flock -w 900 8 || die "timed out waiting for $STATE/build-app-image.lock"

# ---------------------------------------------------------------- (a) base image
ensure_base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "base image $BASE_IMAGE exists"
        return
    fi
    local t0 tmp rootfs debootstrap_log
    t0="$(now)"
    log "base image $BASE_IMAGE not found; creating it with debootstrap ($SUITE minbase + python3)"
    if ! command -v debootstrap >/dev/null 2>&1; then
        command -v apt-get >/dev/null 2>&1 || die "debootstrap is missing and apt-get is not available"
        log "installing debootstrap"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null || die "apt-get update failed"
        apt-get install -y -qq --no-install-recommends debootstrap >"$STATE/logs/apt-debootstrap.log" 2>&1 \
            || { tail -n 20 "$STATE/logs/apt-debootstrap.log" >&2; die "apt-get install debootstrap failed"; }
        hash -r
    fi
    maketemp tmp base
    rootfs="$tmp/rootfs"
    debootstrap_log="$STATE/logs/debootstrap.log"
    local mirror=()
    [[ -n "${DEBOOTSTRAP_MIRROR:-}" ]] && mirror=("$DEBOOTSTRAP_MIRROR")
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$rootfs" "${mirror[@]}" >"$debootstrap_log" 2>&1 \
        || { tail -n 30 "$debootstrap_log" >&2; die "debootstrap failed (log: $debootstrap_log)"; }
    # Nothing in the image needs the downloaded .debs or the package lists.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*
    [[ -x "$rootfs/usr/bin/python3" ]] || die "debootstrap produced no /usr/bin/python3"
    tar --numeric-owner -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --message "debootstrap --variant=minbase $SUITE + python3 python3-venv ca-certificates" \
        - "$BASE_IMAGE" >/dev/null
    rm -rf "$tmp"
    log "base image $BASE_IMAGE created in $(since "$t0") s"
}
ensure_base_image

# What the wheels must match: the image's Python, glibc and CPU (not the host's).
read -r PYVER GLIBC IMG_ARCH < <(docker run --rm --network none "$BASE_IMAGE" python3 -c \
    'import platform, sys; print("%d.%d" % sys.version_info[:2], platform.libc_ver()[1], platform.machine())') \
    || die "could not run python3 in $BASE_IMAGE"
HOST_ARCH="$(uname -m)"
HOST_PY="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none)"
case "$IMG_ARCH" in
    x86_64|amd64) ARCH=x86_64 ;;
    aarch64|arm64) ARCH=aarch64 ;;
    *) die "unsupported image architecture '$IMG_ARCH'" ;;
esac
[[ "$GLIBC" =~ ^2\.([0-9]+)$ ]] || die "could not read the image's glibc version (got '$GLIBC')"
GLIBC_MINOR="${BASH_REMATCH[1]}"
PYTAG="cp${PYVER/./}"
log "image: Python $PYVER, glibc $GLIBC, $ARCH; host: Python $HOST_PY, $HOST_ARCH"
[[ "$ARCH" == "$HOST_ARCH" || ( "$ARCH" == aarch64 && "$HOST_ARCH" == arm64 ) ]] \
    || log "note: image arch $ARCH differs from host arch $HOST_ARCH; wheels follow the image"

# ---------------------------------------------------------------- (b) wheels
PLATFORMS=()
for ((m = GLIBC_MINOR; m >= 17; m--)); do PLATFORMS+=(--platform "manylinux_2_${m}_${ARCH}"); done
PLATFORMS+=(--platform "manylinux2014_${ARCH}")
[[ "$ARCH" == x86_64 ]] && PLATFORMS+=(--platform manylinux2010_x86_64 --platform manylinux1_x86_64)
PIP_TARGET_ARGS=(--only-binary=:all: --python-version "$PYVER" --implementation cp --abi "$PYTAG" "${PLATFORMS[@]}")

PIP=()
for py in python3 "$ROOT/.venv/bin/python" "$ROOT/.venv-sdk/bin/python"; do
    if "$py" -m pip --version >/dev/null 2>&1; then PIP=("$py" -m pip --disable-pip-version-check); break; fi
done
((${#PIP[@]})) || die "no pip found on the host (tried python3, .venv, .venv-sdk)"

CACHE="$STATE/wheels/$PYTAG-$ARCH"
mkdir -p "$CACHE"
maketemp CTX app-ctx
mkdir -p "$CTX/wheels" "$CTX/app"

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

# Resolve from the cache alone (no network, no pip config): copies exactly the needed wheels into the context.
resolve_from_cache() {
    env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
        "${PIP[@]}" download --quiet --no-index --find-links "$CACHE" --dest "$CTX/wheels" \
        "${PIP_TARGET_ARGS[@]}" "${REQ_ARGS[@]}" >"$STATE/logs/pip-offline.log" 2>&1
}
t0="$(now)"
if resolve_from_cache; then
    log "wheels for $WHAT found in cache $CACHE ($(since "$t0") s)"
else
    log "downloading wheels for $WHAT ($PYTAG, $ARCH, glibc <= $GLIBC) into $CACHE"
    "${PIP[@]}" download --quiet --dest "$CACHE" "${PIP_TARGET_ARGS[@]}" "${REQ_ARGS[@]}" \
        >"$STATE/logs/pip-download.log" 2>&1 \
        || { grep -v "is ignored: it is neither a file nor a directory" "$STATE/logs/pip-download.log" | tail -n 20 >&2
             die "pip download failed (log: $STATE/logs/pip-download.log)"; }
    rm -rf "$CTX/wheels"; mkdir -p "$CTX/wheels"
    resolve_from_cache || { tail -n 20 "$STATE/logs/pip-offline.log" >&2; die "wheels downloaded but not resolvable offline (log: $STATE/logs/pip-offline.log)"; }
    log "wheels ready in $(since "$t0") s"
fi
log "$(find "$CTX/wheels" -name '*.whl' | wc -l) wheels, $(du -sh "$CTX/wheels" | cut -f1)"

flock -u 8

# ---------------------------------------------------------------- (c) build
tar -C "$APP_DIR" --exclude=__pycache__ --exclude='*.pyc' --exclude=.git --exclude=./.venv -cf - . | tar -C "$CTX/app" -xf -
cp "$DOCKERFILE" "$CTX/Dockerfile"
BUILD_LOG="$STATE/logs/docker-build-${TAG//[^A-Za-z0-9_.-]/_}.log"
# One build of a tag at a time: a build started while another runs (scripts/test.sh builds in the
# background what the tests then ask for) waits for it and then finds every layer in docker's cache.
exec 7>"$STATE/build-${TAG//[^A-Za-z0-9_.-]/_}.lock"
flock -w 1800 7 || die "timed out waiting for another build of $TAG"
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
