"""The `dendro-slurm` worker: each Dendro job a Slurm batch job on the cluster this worker submits to.

The cluster settings live in the work pool's base job template, editable in the Prefect UI.
"""

from __future__ import annotations

from ..base import DendroJobConfiguration, DendroVariables, DendroWorker
from ..commands import command_builder
from ..launch import Launcher
from .launcher import SlurmLauncher
from .settings import SlurmJobSettings


class SlurmJobConfiguration(DendroJobConfiguration, SlurmJobSettings):
    pass


class SlurmVariables(DendroVariables, SlurmJobSettings):
    pass


class SlurmWorker(DendroWorker):
    type = "dendro-slurm"
    job_configuration = SlurmJobConfiguration
    job_configuration_variables = SlurmVariables
    settings_model = SlurmJobSettings
    _description = "Runs Dendro jobs as Slurm batch jobs (sbatch), watched with one squeue call per poll."
    _display_name = "Dendro Slurm"
    # Slurm checks time limits about once a minute and then gives KillWait: let it end the job itself.
    overrun_grace_sec = 180.0

    def new_launcher(self, settings: SlurmJobSettings) -> Launcher:
        return SlurmLauncher(command_builder(settings.container_method), settings)
