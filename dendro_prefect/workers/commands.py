"""How a job's app is started, whatever runs it: as a plain process, in apptainer/singularity, or with
the docker CLI.

Backends (a local process, a Slurm batch script) turn an `AppCommand` into their own launch.
"""

from __future__ import annotations

import os
import shutil
from typing import Callable

from pydantic import BaseModel, Field

from .apptainer import apptainer_command_builder
from .docker_cli import docker_command
from .job_dir import JobDirectory
from .launch import AppCommand, LaunchError, LaunchRequest

CommandBuilder = Callable[[LaunchRequest, JobDirectory], AppCommand]


class ContainerMethodSetting(BaseModel):
    """The job setting of the pools that start apps themselves (local, Slurm)."""

    container_method: str = Field(
        default="", title="Container method",
        description="docker, apptainer, singularity or none (a plain process in the app's own environment); empty: "
        "the configuration file's. An app without an image runs as a plain process whatever it says.")
SDK_COMMAND = "dendro"


def plain_command(request: LaunchRequest, job_dir: JobDirectory) -> AppCommand:
    """The app's executable in the app's own environment, as the original daemon runs it. The dendro
    SDK's job parent starts `dendro internal-job-monitor`: without that command every job would fail
    after its launch with "No such file or directory: 'dendro'", so it is looked for first."""
    env = dict(request.env, DENDRO_JOB_CLEANUP_DIR=str(job_dir.cleanup))
    path = env.get("PATH") or os.environ.get("PATH", os.defpath)
    if request.sdk_bin_dir:
        path = env["PATH"] = f"{request.sdk_bin_dir}{os.pathsep}{path}"
    if shutil.which(SDK_COMMAND, path=path) is None:
        raise LaunchError(f"the `{SDK_COMMAND}` command of the dendro SDK is not on the PATH of app "
                          f"{request.app_name}, which runs as a plain process under that SDK: install dendro==0.2.17 "
                          f"where the worker runs, or set the pool's sdk_bin_dir to the directory that holds it")
    return AppCommand(list(request.app_argv), env, key_in_env=True)


CONTAINER_METHODS = ("docker", "apptainer", "singularity", "none")


def container_method_for(configured: str, app_image: str | None) -> str:
    """The container method a job runs with: an app without `appImage` runs as a plain process whatever
    the configuration says, as the original daemon runs it (dendro 0.2.17 `compute_resource/_start_job.py`)."""
    if configured not in CONTAINER_METHODS:
        raise LaunchError(f"unknown container method {configured!r}; use one of {', '.join(CONTAINER_METHODS)}")
    return configured if app_image else "none"


def command_builder(container_method: str) -> CommandBuilder:
    """How an app of a (checked, `container_method_for`) container method starts, on the local pool and on
    Slurm nodes alike: docker through the CLI's `docker run` (docker_cli.py). Image-less apps are `none`."""
    if container_method == "none":
        return plain_command
    if container_method == "docker":
        return docker_command
    return apptainer_command_builder(container_method)
