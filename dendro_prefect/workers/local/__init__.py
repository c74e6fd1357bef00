"""The `dendro-local` worker: Dendro jobs on this machine, in docker, apptainer/singularity, or as
plain processes (`none`)."""

from __future__ import annotations

from ..base import DendroJobConfiguration, DendroVariables, DendroWorker
from ..commands import ContainerMethodSetting, command_builder
from ..launch import Launcher
from .command import CommandLauncher
from .docker import DockerLauncher


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
    _documentation_url = "https://github.com/flatironinstitute/dendro"

    def new_launcher(self, settings: ContainerMethodSetting) -> Launcher:
        method = settings.container_method
        if method == "docker":
            return DockerLauncher()
        return CommandLauncher("process" if method == "none" else method, command_builder(method))
