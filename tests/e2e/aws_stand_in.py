"""AWS for the tests: moto's server (AWS itself cannot run here), with its Batch backend running each job
as a real container from a local image on the docker engine, on the host network so that jobs reach the
central stand-in on loopback, and a job definition's `secrets` put into the container's environment as AWS
does (moto_batch_secrets.py). What moto does differently from AWS (no exit code in describe_jobs, logs
only once a job ends, jobs never held RUNNABLE) is tolerated by the code, never relied upon."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import boto3
import requests

from dendro_prefect.child_processes import free_port, server_process

REGION = "us-east-1"
CPU_QUEUE = "dendro-cpu"
GPU_QUEUE = "dendro-gpu"
TRUST = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "batch.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
MOTO_SERVER = [sys.executable, str(Path(__file__).with_name("moto_batch_secrets.py"))]
EXECUTION_ROLE = "dendro-batch-execution"  # Batch reads the job keys' secrets with it


@dataclass
class MotoBatch:
    url: str
    execution_role: str = ""  # create_batch_environment's

    def client(self, service: str):
        return boto3.client(service, region_name=REGION, endpoint_url=self.url, aws_access_key_id="testing",
                            aws_secret_access_key="testing")


@contextmanager
def moto_server(log_file: Path, startup_timeout: float = 30.0) -> Iterator[MotoBatch]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return requests.get(f"{url}/moto-api/", timeout=2).ok
        except requests.ConnectionError:
            return False

    with server_process([*MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)], log_file, ready, "moto_server",
                        startup_timeout, env=dict(os.environ, MOTO_DOCKER_NETWORK_MODE="host")):
        yield MotoBatch(url)


def create_batch_environment(moto: MotoBatch) -> str:
    """A compute environment (UNMANAGED: moto runs its jobs itself) behind a CPU and a GPU queue; the ARN
    of an execution role for the jobs."""
    iam, batch = moto.client("iam"), moto.client("batch")
    role = iam.create_role(RoleName="dendro-batch-service", AssumeRolePolicyDocument=TRUST)["Role"]["Arn"]
    execution_role = iam.create_role(RoleName=EXECUTION_ROLE, AssumeRolePolicyDocument=TRUST.replace(
        "batch.amazonaws.com", "ecs-tasks.amazonaws.com"))["Role"]["Arn"]
    batch.create_compute_environment(computeEnvironmentName="dendro-ce", type="UNMANAGED", state="ENABLED",
                                     serviceRole=role)
    for queue in (CPU_QUEUE, GPU_QUEUE):
        batch.create_job_queue(jobQueueName=queue, state="ENABLED", priority=1,
                               computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "dendro-ce"}])
    return execution_role
