"""The `dendro-local` worker: Dendro jobs on this machine, in docker, apptainer/singularity, or as
plain processes (`none`), each a process of the worker (`CommandLauncher`). A docker job is the `docker run`
command a Slurm batch script runs (`docker_cli.py`), its image looked up, or pulled, before the launch."""

from __future__ import annotations

from ..base import DendroJobConfiguration, DendroVariables, DendroWorker
from ..commands import ContainerMethodSetting, command_builder
from ..docker_cli import ensure_image
from ..launch import Launcher, LaunchRequest
from .command import CommandLauncher


class LocalJobConfiguration(DendroJobConfiguration, ContainerMethodSetting):
    pass


class LocalVariables(DendroVariables, ContainerMethodSetting):
    pass


class LocalWorker(DendroWorker):
    type = "dendro-local"
    job_configuration = LocalJobConfiguration
    job_configuration_variables = LocalVariables
    settings_model = ContainerMethodSetting
    _description = "Runs Dendro jobs on the worker's machine: docker, apptainer/singularity or plain processes."
    _display_name = "Dendro local"

    def new_launcher(self, settings: ContainerMethodSetting) -> Launcher:
        method = settings.container_method
        return CommandLauncher("process" if method == "none" else method, command_builder(method),
                               prepare=_ensure_image_of if method == "docker" else None)


def _ensure_image_of(request: LaunchRequest) -> None:
    ensure_image(request.app_image or "")
