"""What every container method agrees on, whatever starts the container (the docker or apptainer CLI, as
a process of the local worker or in a Slurm batch script): the job's paths inside the container,
the key read from a mounted file, the container's name and label, and the network it needs."""

from __future__ import annotations

from urllib.parse import urlparse

from .launch import LaunchRequest

JOB_LABEL = "org.dendro.job-id"
SECRET_MOUNT = "/run/dendro"
# The job private key is read from the mounted secrets directory as the container starts, so it is
# in neither the container's configuration nor the command line.
KEY_WRAPPER = 'JOB_PRIVATE_KEY="$(cat /run/dendro/job_private_key)" exec "$0" "$@"'
# Where no job directory is mounted (a cloud container), the working directory is made at start.
WORKING_DIR_WRAPPER = 'mkdir -p /tmp/working && cd /tmp/working && exec "$0" "$@"'


def wrapped(wrapper: str, app_argv: list[str]) -> list[str]:
    """The app's command line behind one of the wrappers above."""
    return ["/bin/sh", "-c", wrapper, *app_argv]


def container_environment(request: LaunchRequest) -> dict[str, str]:
    """The job's environment inside a container, whose /tmp is the job's cleanup directory."""
    return dict(request.env, DENDRO_JOB_CLEANUP_DIR="/tmp", DENDRO_JOB_WORKING_DIR="/tmp/working",
                KACHERY_CLOUD_DIR="/tmp/.kachery-cloud")


def container_name(job_id: str) -> str:
    return f"dendro-{job_id.replace('.', '-')}"


def uses_loopback(url: str) -> bool:
    """A central on this machine's loopback is reached from a container only on the host network."""
    host = urlparse(url).hostname or ""
    return host == "localhost" or host.startswith("127.") or host == "::1"
