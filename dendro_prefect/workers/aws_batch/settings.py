"""The AWS Batch pool's own job settings, declared once: its form in the Prefect UI, its jobs' configuration
and its launchers are all made of this model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..launch import InfrastructureRetrySetting


class AwsBatchJobSettings(InfrastructureRetrySetting):
    aws_credentials_block: str = Field(
        default="", description="Name of a prefect-aws AwsCredentials block; empty: boto3's default chain "
        "(environment, config files, instance role).")
    region_name: str = Field(default="", description="AWS region; empty: the block's or boto3's.")
    cpu_job_queue: str = Field(default="DendroBatchStack-job-queue-cpu", description="Job queue of CPU jobs.")
    gpu_job_queue: str = Field(default="DendroBatchStack-job-queue-gpu", description="Job queue of jobs with GPUs.")
    job_definition_name: str = Field(default="{app_name}-dendro-jd", description="Name of an app's job "
                                     "definition; {app_name} is filled in. One per app image, reused.")
    job_role_arn: str = Field(default="", description="IAM role of the job containers (jobRoleArn).")
    execution_role_arn: str = Field(default="", description="IAM role Batch starts the containers with "
                                    "(executionRoleArn); with secretsmanager:GetSecretValue on dendro/job/*, the "
                                    "job keys are kept in Secrets Manager.")
    job_key_delivery: Literal["auto", "secrets-manager", "environment"] = Field(
        default="auto", description="How a job's private key reaches its container. secrets-manager: a secret "
        "per job, deleted when it ends; environment: in the Batch job's containerOverrides, readable with "
        "batch:DescribeJobs; auto: secrets-manager when execution_role_arn is set and the worker may create "
        "secrets, environment otherwise (the flow-run log says which).")
    extra_container_properties: dict = Field(default_factory=dict, description="More containerProperties of "
                                             "the job definitions, e.g. logConfiguration or volumes.")
    tags: dict[str, str] = Field(default_factory=dict, description="Tags on job definitions and jobs.")
    memory_fraction: float = Field(default=0.9, description="MEMORY asked of Batch = memoryGb × this (headroom "
                                   "for the container agent, so a job fits an instance of its nominal size).")
    attempt_margin_sec: float = Field(default=600.0, description="Added to timeSec for the attempt timeout: "
                                      "the dendro SDK stops the app at timeSec, Batch is the backstop.")
    runnable_warning_sec: float = Field(default=300.0, description="A job RUNNABLE this long after its submission "
                                        "gets a log line saying why it waits (queue and compute environment status).")

    def infrastructure_time_limit(self, time_limit_sec: float | None) -> float | None:
        """Batch's attempt timeout of a job: its timeSec and the margin (the worker waits as long before it kills)."""
        return None if time_limit_sec is None else time_limit_sec + self.attempt_margin_sec
