"""How a job's app is started, whatever runs it: as a plain process, in apptainer/singularity, or with
the docker CLI.

Backends (a local process, a Slurm batch script) turn an `AppCommand` into their own launch.
"""

from __future__ import annotations

from typing import Callable

from .apptainer import apptainer_command_builder
from .docker_cli import docker_command
from .job_dir import JobDirectory
from .launch import AppCommand, LaunchError, LaunchRequest

CommandBuilder = Callable[[LaunchRequest, JobDirectory], AppCommand]


def plain_command(request: LaunchRequest, job_dir: JobDirectory) -> AppCommand:
    """The app's executable in the app's own environment, as the original daemon runs it."""
    return AppCommand([request.app_executable], dict(request.env, DENDRO_JOB_CLEANUP_DIR=str(job_dir.cleanup)),
                      key_in_env=True)


def command_builder(container_method: str, docker: bool = False) -> CommandBuilder:
    """`docker` says whether the backend starts docker containers through the CLI (the local pool
    uses the docker SDK instead)."""
    if container_method == "none":
        return plain_command
    if container_method in ("apptainer", "singularity"):
        return apptainer_command_builder(container_method)
    if container_method == "docker" and docker:
        return docker_command
    usable = "none, apptainer, singularity or docker" if docker else "none, apptainer or singularity"
    raise LaunchError(f"container method {container_method!r} cannot run here; use {usable}")
