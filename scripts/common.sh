#!/usr/bin/env bash
# Sourced by the service scripts (start-/stop-dockerd, start-/stop-slurm) and the image builds
# (build-app-image, build-server-images): the repo root, the state directory, sbin on PATH (the daemons and
# debootstrap live there), logging and timing; for the image builds, their shared steps below.
# Set SCRIPT_NAME before sourcing.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export STATE="${DENDRO_PREFECT_STATE:-$ROOT/.state}"

for d in /usr/local/sbin /usr/sbin /sbin; do
    case ":$PATH:" in *":$d:"*) ;; *) PATH="$PATH:$d";; esac
done
export PATH

log() { printf '[%s] %s\n' "$SCRIPT_NAME" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# Running, and not a zombie left unreaped by whatever adopted it.
alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }

# ---------------------------------------------------------------- images built without a registry
# The steps build-app-image.sh and build-server-images.sh share: no image can be pulled, so every image starts
# from BASE_IMAGE, a debootstrapped Debian made here once (ensure_base_image), and gets its Python packages as
# wheels downloaded on the host for the base image's Python, glibc and CPU (image_wheels).
BASE_IMAGE="${DENDRO_PREFECT_BASE_IMAGE:-dendro-python-base:bookworm}"
SUITE=bookworm

# The state directory (absolute, ignored by git) with its logs/.
image_state() {
    mkdir -p "$STATE"
    [[ -e "$STATE/.gitignore" ]] || printf '*\n' > "$STATE/.gitignore"
    STATE="$(cd "$STATE" && pwd)"
    mkdir -p "$STATE/logs"
}

# Temp dirs removed at exit: the build scripts `trap cleanup EXIT`.
TMPDIRS=()
cleanup() { local d; for d in "${TMPDIRS[@]}"; do [[ -n "$d" ]] && rm -rf "$d"; done; }
# maketemp VAR NAME: make a temp dir, removed on exit, and store its path in VAR (no subshell, so
# the cleanup list sees it).
maketemp() { local d; d="$(mktemp -d "${TMPDIR:-/tmp}/dendro-$2.XXXXXX")"; TMPDIRS+=("$d"); printf -v "$1" '%s' "$d"; }

# The base image and the wheel cache are shared by all builds: one build at a time goes through these steps
# (lock_image_deps ... unlock_image_deps).
lock_image_deps() {
    exec 8>"$STATE/build-app-image.lock"
    flock -w 900 8 || die "timed out waiting for $STATE/build-app-image.lock"
}
unlock_image_deps() { flock -u 8; }

# (a) BASE_IMAGE, made once, when `docker image inspect` does not find it: debootstrap a Debian bookworm minbase
#     with python3, python3-venv and ca-certificates into a temp dir and `docker import` it.
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

# (b) image_wheels DEST WHAT REQUIREMENT...: the wheels of these requirements (pip's arguments: specifiers,
#     -r FILE) and all their dependencies, for BASE_IMAGE's Python, glibc and CPU (checked inside the image, not
#     the host's), into DEST. Downloaded on the host into the cache <state>/wheels/<python>-<arch> once, and
#     taken from there offline when the cache already satisfies the requirements. WHAT names them in the log.
image_wheels() {
    local dest="$1" what="$2"; shift 2
    local pyver pyfull glibc img_arch arch host_py pytag
    # The image's environment markers (those of packaging's default_environment) and glibc.
    PIP_MARKER_ENVIRONMENT="$(docker run --rm --network none "$BASE_IMAGE" python3 -c '
import json, os, platform, sys
v = sys.implementation.version
print(json.dumps({
    "implementation_name": sys.implementation.name,
    "implementation_version": "%d.%d.%d" % v[:3] + ("" if v.releaselevel == "final" else v.releaselevel[0] + str(v.serial)),
    "os_name": os.name, "platform_machine": platform.machine(), "platform_release": platform.release(),
    "platform_system": platform.system(), "platform_version": platform.version(),
    "python_full_version": platform.python_version(), "platform_python_implementation": platform.python_implementation(),
    "python_version": "%d.%d" % sys.version_info[:2], "sys_platform": sys.platform, "glibc": platform.libc_ver()[1]}))')" \
        || die "could not run python3 in $BASE_IMAGE"
    export PIP_MARKER_ENVIRONMENT
    read -r pyver pyfull glibc img_arch < <(python3 -c 'import json, sys; e = json.loads(sys.argv[1])
print(e["python_version"], e["python_full_version"], e["glibc"], e["platform_machine"])' "$PIP_MARKER_ENVIRONMENT")
    host_py="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none)"
    case "$img_arch" in
        x86_64|amd64) arch=x86_64 ;;
        aarch64|arm64) arch=aarch64 ;;
        *) die "unsupported image architecture '$img_arch'" ;;
    esac
    [[ "$glibc" =~ ^2\.([0-9]+)$ ]] || die "could not read the image's glibc version (got '$glibc')"
    local glibc_minor="${BASH_REMATCH[1]}"
    pytag="cp${pyver/./}"
    log "image: Python $pyfull, glibc $glibc, $arch; host: Python $host_py, $(uname -m)"
    [[ "$arch" == "$(uname -m)" || ( "$arch" == aarch64 && "$(uname -m)" == arm64 ) ]] \
        || log "note: image arch $arch differs from host arch $(uname -m); wheels follow the image"

    local platforms=() m
    for ((m = glibc_minor; m >= 17; m--)); do platforms+=(--platform "manylinux_2_${m}_${arch}"); done
    platforms+=(--platform "manylinux2014_${arch}")
    [[ "$arch" == x86_64 ]] && platforms+=(--platform manylinux2010_x86_64 --platform manylinux1_x86_64)
    local target=(--only-binary=:all: --python-version "$pyfull" --implementation cp --abi "$pytag" "${platforms[@]}")

    local pip=() py
    for py in python3 "$ROOT/.venv/bin/python" "$ROOT/.venv-sdk/bin/python"; do
        # pip, with the image's environment markers (scripts/pip-for-image.py)
        if "$py" -m pip --version >/dev/null 2>&1; then
            pip=("$py" "$ROOT/scripts/pip-for-image.py" --disable-pip-version-check); break
        fi
    done
    ((${#pip[@]})) || die "no pip found on the host (tried python3, .venv, .venv-sdk)"

    local cache="$STATE/wheels/$pytag-$arch" t0
    mkdir -p "$cache" "$dest"
    # Resolve from the cache alone (no network, no pip config): copies exactly the needed wheels into DEST.
    resolve_from_cache() {
        env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
            "${pip[@]}" download --quiet --no-index --find-links "$cache" --dest "$dest" \
            "${target[@]}" "$@" >"$STATE/logs/pip-offline.log" 2>&1
    }
    t0="$(now)"
    if resolve_from_cache "$@"; then
        log "wheels for $what found in cache $cache ($(since "$t0") s)"
    else
        log "downloading wheels for $what ($pytag, $arch, glibc <= $glibc) into $cache"
        # A requirement published as an sdist only (pubnub) gets a wheel built on the host, once: pure Python only.
        local missing built
        # (--find-links: pip's own find-links, and the cache, where such wheels are)
        local links=(--find-links "$cache") link
        for link in ${PIP_FIND_LINKS:-} $("${pip[@]}" config get global.find-links 2>/dev/null); do links+=(--find-links "$link"); done
        until "${pip[@]}" download --quiet --dest "$cache" "${links[@]}" "${target[@]}" "$@" \
                >"$STATE/logs/pip-download.log" 2>&1; do
            missing="$(sed -n 's/^ERROR: No matching distribution found for //p' "$STATE/logs/pip-download.log" | head -n 1)"
            [[ -n "$missing" && "$missing" != "${built:-}" ]] \
                || { grep -v "is ignored: it is neither a file nor a directory" "$STATE/logs/pip-download.log" | tail -n 20 >&2
                     die "pip download failed (log: $STATE/logs/pip-download.log)"; }
            log "no wheel of $missing for the image: building one from its sdist"
            "${pip[@]}" wheel --quiet --no-deps --wheel-dir "$cache" "$missing" >"$STATE/logs/pip-wheel.log" 2>&1 \
                || { tail -n 20 "$STATE/logs/pip-wheel.log" >&2; die "no wheel of $missing (log: $STATE/logs/pip-wheel.log)"; }
            find "$cache" -newer "$STATE/logs/pip-download.log" -name '*.whl' ! -name '*-none-any.whl' | grep -q . \
                && die "the wheel built for $missing is not pure Python: it would not fit the image"
            built="$missing"
        done
        rm -rf "$dest"; mkdir -p "$dest"
        resolve_from_cache "$@" || { tail -n 20 "$STATE/logs/pip-offline.log" >&2; die "wheels downloaded but not resolvable offline (log: $STATE/logs/pip-offline.log)"; }
        log "wheels ready in $(since "$t0") s"
    fi
    log "$(find "$dest" -name '*.whl' | wc -l) wheels, $(du -sh "$dest" | cut -f1)"
}

# build_lock TAG: one build of a tag at a time. A build started while another runs (scripts/test.sh builds in the
# background what the tests then ask for) waits for it and then finds every layer in docker's cache.
build_lock() {
    exec 7>"$STATE/build-${1//[^A-Za-z0-9_.-]/_}.lock"
    flock -w 1800 7 || die "timed out waiting for another build of $1"
}
