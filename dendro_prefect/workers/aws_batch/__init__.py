"""The `dendro-aws-batch` worker: each Dendro job an AWS Batch job, submitted, watched, logged and
terminated through boto3. The AWS settings live in the work pool's base job template."""

from __future__ import annotations

from ..base import DendroJobConfiguration, DendroVariables, DendroWorker
from ..launch import Launcher
from .launcher import AwsBatchLauncher
from .settings import AwsBatchJobSettings


class AwsBatchJobConfiguration(DendroJobConfiguration, AwsBatchJobSettings):
    pass


class AwsBatchVariables(DendroVariables, AwsBatchJobSettings):
    pass


class AwsBatchWorker(DendroWorker):
    type = "dendro-aws-batch"
    job_configuration = AwsBatchJobConfiguration
    job_configuration_variables = AwsBatchVariables
    settings_model = AwsBatchJobSettings
    _description = "Runs Dendro jobs as AWS Batch jobs (boto3), watched with one describe_jobs call per poll."
    _display_name = "Dendro AWS Batch"
    # Batch enforces the attempt timeout itself: give it time to.
    overrun_grace_sec = 120.0

    def new_launcher(self, settings: AwsBatchJobSettings) -> Launcher:
        return AwsBatchLauncher(settings)
