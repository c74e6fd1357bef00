"""moto's server, with one thing of AWS Batch it lacks: a job definition's `secrets` reach the container's
environment (AWS resolves them through the execution role; moto's Batch leaves them out). Resolved from
moto's own Secrets Manager, in the job's thread only, so that describe_jobs shows the environment as AWS does:
without them. Run as `python moto_batch_secrets.py -H HOST -p PORT` (moto_server's arguments)."""

from __future__ import annotations

import threading

from moto.batch.models import Job
from moto.secretsmanager.models import secretsmanager_backends
from moto.server import main

_container_property = Job._get_container_property


def _with_secrets(job: Job, name: str, default):
    value = _container_property(job, name, default)
    if name != "environment" or threading.current_thread() is not job:
        return value
    secrets = secretsmanager_backends[job.backend.account_id][job.backend.region_name]
    return value + [{"name": secret["name"], "value": secrets.get_secret_value(secret["valueFrom"], None, None)
                     ["SecretString"]} for secret in job.job_definition.container_properties.get("secrets", [])]


Job._get_container_property = _with_secrets

if __name__ == "__main__":
    main()
