"""The Slurm pool's own job settings, declared once: its form in the Prefect UI, its jobs' configuration
and its launchers are all made of this model."""

from __future__ import annotations

from pydantic import Field

from ..commands import ContainerMethodSetting
from ..launch import InfrastructureRetrySetting


class SlurmJobSettings(ContainerMethodSetting, InfrastructureRetrySetting):
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
    pack_batches: bool = Field(default=False, description="Pack CPU jobs of one Dendro batch (batchId) that ask "
                               "for the same resources into one allocation, each job a step (srun).")
    pack_window_sec: float = Field(default=2.0, description="How long a pack waits for more jobs of its batch.")
    max_jobs_per_allocation: int = Field(default=16, description="The most jobs packed into one allocation.")

    def infrastructure_time_limit(self, time_limit_sec: float | None) -> float | None:
        """Slurm's --time of a job: its timeSec and the margin (the worker waits as long before it kills)."""
        return None if time_limit_sec is None else time_limit_sec + self.time_margin_sec
