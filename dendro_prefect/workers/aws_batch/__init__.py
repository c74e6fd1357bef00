"""The `dendro-aws-batch` worker: each Dendro job an AWS Batch job, submitted, watched, logged and
terminated through boto3. The AWS settings live in the work pool's base job template."""

from __future__ import annotations

import dataclasses
import json

from pydantic import BaseModel, Field

from ..base import DendroJobConfiguration, DendroVariables, DendroWorker
from ..launch import Launcher
from .credentials import AwsAccess
from .launcher import AwsBatchLauncher, BatchSettings


class AwsBatchJobSettings(BaseModel):
    """The AWS Batch pool's own job variables, declared once for its form and its jobs."""

    aws_credentials_block: str = Field(
        default="", description="Name of a prefect-aws AwsCredentials block; empty: boto3's default chain "
        "(environment, config files, instance role).")
    region_name: str = Field(default="", description="AWS region; empty: the block's or boto3's.")
    cpu_job_queue: str = Field(default="DendroBatchStack-job-queue-cpu", description="Job queue of CPU jobs.")
    gpu_job_queue: str = Field(default="DendroBatchStack-job-queue-gpu", description="Job queue of jobs with GPUs.")
    job_definition_name: str = Field(default="{app_name}-dendro-jd", description="Name of an app's job "
                                     "definition; {app_name} is filled in. One per app image, reused.")
    job_role_arn: str = Field(default="", description="IAM role of the job containers (jobRoleArn).")
    extra_container_properties: dict = Field(default_factory=dict, description="More containerProperties of "
                                             "the job definitions, e.g. logConfiguration or volumes.")
    tags: dict[str, str] = Field(default_factory=dict, description="Tags on job definitions and jobs.")
    memory_fraction: float = Field(default=0.9, description="MEMORY asked of Batch = memoryGb × this (headroom "
                                   "for the container agent, so a job fits an instance of its nominal size).")
    attempt_margin_sec: float = Field(default=600.0, description="Added to timeSec for the attempt timeout: "
                                      "the dendro SDK stops the app at timeSec, Batch is the backstop.")
    max_host_retries: int = Field(default=0, description="How often Batch retries a job whose host went away "
                                  "(spot reclaim) before it fails. Retried jobs need DENDRO_FORCE_STATUS_UPDATES=1, "
                                  "which also lets the app overwrite a failure set at the central: 0 by default.")
    runnable_warning_sec: float = Field(default=300.0, description="A job RUNNABLE this long gets a log line "
                                        "saying why it waits (queue and compute environment status).")


class AwsBatchJobConfiguration(DendroJobConfiguration, AwsBatchJobSettings):
    pass


class AwsBatchVariables(DendroVariables, AwsBatchJobSettings):
    pass


class AwsBatchWorker(DendroWorker):
    type = "dendro-aws-batch"
    job_configuration = AwsBatchJobConfiguration
    job_configuration_variables = AwsBatchVariables
    _description = "Runs Dendro jobs as AWS Batch jobs (boto3), watched with one describe_jobs call per poll."
    _display_name = "Dendro AWS Batch"
    _documentation_url = "https://github.com/flatironinstitute/dendro"
    # Batch enforces the attempt timeout itself: give it time to.
    overrun_grace_sec = 120.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._launchers: dict[str, Launcher] = {}

    def job_time_limit(self, configuration: AwsBatchJobConfiguration) -> float | None:
        limit = configuration.time_limit_sec
        return None if limit is None else limit + configuration.attempt_margin_sec

    def launcher(self, configuration: AwsBatchJobConfiguration) -> Launcher:
        settings = BatchSettings(
            access=AwsAccess(configuration.aws_credentials_block, configuration.region_name),
            cpu_job_queue=configuration.cpu_job_queue, gpu_job_queue=configuration.gpu_job_queue,
            job_definition_name=configuration.job_definition_name, job_role_arn=configuration.job_role_arn,
            extra_container_properties=configuration.extra_container_properties,
            tags=configuration.tags, memory_fraction=configuration.memory_fraction,
            attempt_margin_sec=configuration.attempt_margin_sec, max_host_retries=configuration.max_host_retries,
            runnable_warning_sec=configuration.runnable_warning_sec,
        )
        key = json.dumps(dataclasses.asdict(settings), sort_keys=True, default=str)
        if key not in self._launchers:
            self._launchers[key] = AwsBatchLauncher(settings)
        return self._launchers[key]
