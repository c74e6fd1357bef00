# Image for one Dendro app written with the real dendro SDK. Built by scripts/build-app-image.sh
# with the classic builder (DOCKER_BUILDKIT=0) and `--network none`: nothing is fetched during the
# build. The build context that script lays out holds:
#   wheels/           dendro, the app's requirements and all their dependencies as wheels matching
#                     the base image's Python
#   requirements.txt  the app's requirements.txt (a comment only when the app has none)
#   app/              the app directory (main.py, spec.json, ...)
# The base image is a debootstrapped Debian minbase with python3 + python3-venv (no registry needed).
ARG BASE_IMAGE=dendro-python-base:bookworm

# Stage 1: build the venv from the wheels (the wheels layer stays out of the final image).
FROM ${BASE_IMAGE} AS venv
ARG DENDRO_REQUIREMENT=dendro==0.2.17
COPY wheels/ /tmp/wheels/
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/dendro-venv \
 && /opt/dendro-venv/bin/python -m pip install --quiet --no-index --no-cache-dir --disable-pip-version-check \
        --find-links /tmp/wheels "${DENDRO_REQUIREMENT}" -r /tmp/requirements.txt \
 && /opt/dendro-venv/bin/python -c "import dendro.sdk" \
 && /opt/dendro-venv/bin/dendro --help >/dev/null

# Stage 2: the app image.
FROM ${BASE_IMAGE}
# The venv's bin comes first, so `#!/usr/bin/env python3` (the apps' main.py) finds the venv's
# python, and the `dendro` CLI (the SDK starts `dendro internal-job-monitor ...`) is on PATH.
ENV VIRTUAL_ENV=/opt/dendro-venv \
    PATH=/opt/dendro-venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1
COPY --from=venv /opt/dendro-venv /opt/dendro-venv
COPY app/ /app/
RUN chmod 0755 /app/main.py
CMD ["/app/main.py"]
