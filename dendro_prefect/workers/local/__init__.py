"""The `dendro-local` worker: Dendro jobs on this machine, in docker, apptainer/singularity, or as
plain processes (`none`)."""

from __future__ import annotations

from ..base import DendroJobConfiguration, DendroVariables, DendroWorker
from ..commands import ContainerMethodSetting, command_builder, container_method_for
from ..launch import Launcher, LaunchError
from .command import CommandLauncher
from .docker import DockerLauncher

CONTAINER_METHODS = ("docker", "apptainer", "singularity", "none")


class LocalJobConfiguration(DendroJobConfiguration, ContainerMethodSetting):
    pass


class LocalVariables(DendroVariables, ContainerMethodSetting):
    pass


class LocalWorker(DendroWorker):
    type = "dendro-local"
    job_configuration = LocalJobConfiguration
    job_configuration_variables = LocalVariables
    _description = "Runs Dendro jobs on the worker's machine: docker, apptainer/singularity or plain processes."
    _display_name = "Dendro local"
    _documentation_url = "https://github.com/flatironinstitute/dendro"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._launchers: dict[str, Launcher] = {}

    def launcher(self, configuration: LocalJobConfiguration) -> Launcher:
        configured = configuration.container_method or self.central_jobs(configuration.config_file).config.container_method
        if configured not in CONTAINER_METHODS:
            raise LaunchError(f"unknown container method {configured!r}; use one of {', '.join(CONTAINER_METHODS)}")
        method = container_method_for(configured, configuration.app_image)
        if method not in self._launchers:
            if method == "docker":
                self._launchers[method] = DockerLauncher()
            else:
                self._launchers[method] = CommandLauncher("process" if method == "none" else method,
                                                          command_builder(method))
        return self._launchers[method]
