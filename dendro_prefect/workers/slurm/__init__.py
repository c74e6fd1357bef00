"""The `dendro-slurm` worker: each Dendro job a Slurm batch job on the cluster this worker submits to.

The cluster settings live in the work pool's base job template, editable in the Prefect UI.
"""

from __future__ import annotations

from pydantic import Field

from ..base import DendroJobConfiguration, DendroVariables, DendroWorker
from ..commands import ContainerMethodSetting, command_builder, container_method_for
from ..launch import Launcher
from .launcher import SlurmLauncher, SlurmSettings
from .script import ClusterOptions


class SlurmJobSettings(ContainerMethodSetting):
    """The Slurm pool's own job variables, declared once for its form and its jobs."""

    partition: str = Field(default="", description="Partition of CPU jobs (empty: the cluster's default).")
    gpu_partition: str = Field(default="", description="Partition of jobs that ask for GPUs (empty: partition).")
    account: str = Field(default="", description="--account to charge.")
    qos: str = Field(default="", description="--qos of the jobs.")
    extra_sbatch_lines: list[str] = Field(default_factory=list,
                                          description="More #SBATCH options, one per line, e.g. --constraint=ib.")
    setup_lines: list[str] = Field(default_factory=list,
                                   description="Shell lines run before the app, e.g. `module load apptainer`.")
    time_margin_sec: float = Field(
        default=60.0, description="Added to the job's timeSec for Slurm's --time: the dendro SDK stops the app at "
        "timeSec and reports it; Slurm's limit is the backstop.")
    max_requeues: int = Field(default=2, description="How often a job preempted or lost with its node "
                              "(PREEMPTED, NODE_FAIL, BOOT_FAIL) is submitted again before it fails.")
    pack_batches: bool = Field(default=False, description="Pack CPU jobs of one Dendro batch (batchId) that ask "
                               "for the same resources into one allocation, each job a step (srun).")
    pack_window_sec: float = Field(default=2.0, description="How long a pack waits for more jobs of its batch.")
    max_jobs_per_allocation: int = Field(default=16, description="The most jobs packed into one allocation.")


class SlurmJobConfiguration(DendroJobConfiguration, SlurmJobSettings):
    pass


class SlurmVariables(DendroVariables, SlurmJobSettings):
    pass


class SlurmWorker(DendroWorker):
    type = "dendro-slurm"
    job_configuration = SlurmJobConfiguration
    job_configuration_variables = SlurmVariables
    _description = "Runs Dendro jobs as Slurm batch jobs (sbatch), watched with one squeue call per poll."
    _display_name = "Dendro Slurm"
    _documentation_url = "https://github.com/flatironinstitute/dendro"
    # Slurm checks time limits about once a minute and then gives KillWait: let it end the job itself.
    overrun_grace_sec = 180.0

    def job_time_limit(self, configuration: SlurmJobConfiguration) -> float | None:
        limit = configuration.time_limit_sec
        return None if limit is None else limit + configuration.time_margin_sec

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._launchers: dict[tuple, Launcher] = {}

    def launcher(self, configuration: SlurmJobConfiguration) -> Launcher:
        method = container_method_for(
            configuration.container_method or self.central_jobs(configuration.config_file).config.container_method,
            configuration.app_image)
        settings = SlurmSettings(
            cluster=ClusterOptions(
                partition=configuration.partition, gpu_partition=configuration.gpu_partition,
                account=configuration.account, qos=configuration.qos,
                extra_sbatch_lines=tuple(configuration.extra_sbatch_lines),
                time_margin_sec=configuration.time_margin_sec),
            setup_lines=tuple(configuration.setup_lines), max_requeues=configuration.max_requeues,
            pack_batches=configuration.pack_batches, pack_window_sec=configuration.pack_window_sec,
            max_jobs_per_allocation=configuration.max_jobs_per_allocation,
        )
        key = (method, settings)
        if key not in self._launchers:
            self._launchers[key] = SlurmLauncher(command_builder(method, docker=True), settings)
        return self._launchers[key]
