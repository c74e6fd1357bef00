"""Where an AWS Batch job's private key travels. In the job's `containerOverrides`, as the original daemon
sends it, anyone allowed `batch:DescribeJobs` reads it for as long as Batch keeps the job. In Secrets Manager
only the job's execution role reads it: a secret per job, referenced from a job definition of the job's own
(Batch resolves `secrets` from job definitions only), both removed when the job ends."""

from __future__ import annotations

import re
from typing import Any

from botocore.exceptions import ClientError

SECRET_PREFIX = "dendro/job/"
SECRET_NAME_CHARS = re.compile(r"[^A-Za-z0-9/_+=.@-]")
KEY_VARIABLE = "JOB_PRIVATE_KEY"
IN_OVERRIDES = ("AWS Batch: the job key travels in the Batch job's containerOverrides, readable with "
                "batch:DescribeJobs")


def secret_name(job_id: str) -> str:
    return SECRET_PREFIX + SECRET_NAME_CHARS.sub("-", job_id)


def store_key(secrets: Any, job_id: str, key: str, tags: dict[str, str]) -> str:
    """The ARN of the job's secret holding `key`; a secret left by an earlier attempt to submit it is
    overwritten. Blocking."""
    name = secret_name(job_id)
    try:
        return secrets.create_secret(
            Name=name, SecretString=key, Description=f"Private key of Dendro job {job_id}, deleted when it ends",
            Tags=[{"Key": k, "Value": v} for k, v in {"dendro-job-id": job_id, **tags}.items()])["ARN"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "ResourceExistsException":
            raise
    return secrets.put_secret_value(SecretId=name, SecretString=key)["ARN"]


def remove_key(secrets: Any, job_id: str) -> None:
    """Delete the job's secret at once (no recovery window: nothing needs it after the job). Blocking."""
    try:
        secrets.delete_secret(SecretId=secret_name(job_id), ForceDeleteWithoutRecovery=True)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            raise
