"""AWS clients from a Prefect `AwsCredentials` block (prefect-aws), or from boto3's default chain
(environment, config files, instance role) when the pool names no block. One code path: an unnamed
block is an empty `AwsCredentials`, which is boto3's chain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from ..launch import LaunchError


class AwsClients(NamedTuple):
    batch: Any
    logs: Any
    secrets: Any  # Secrets Manager, for the jobs' keys


@dataclass(frozen=True)
class AwsAccess:
    credentials_block: str = ""
    region_name: str = ""

    def clients(self) -> AwsClients:
        """The Batch, CloudWatch Logs and Secrets Manager clients. Blocking: call from a worker thread."""
        from prefect_aws import AwsCredentials

        try:
            credentials = AwsCredentials.load(self.credentials_block, _sync=True) if self.credentials_block \
                else AwsCredentials()
        except ValueError as error:
            raise LaunchError(f"AWS credentials block {self.credentials_block!r} cannot be loaded: {error}") from None
        if self.region_name:
            credentials = credentials.model_copy(update={"region_name": self.region_name})
        if not credentials.region_name and not credentials.get_boto3_session().region_name:
            raise LaunchError("no AWS region: set region_name on the work pool or in the credentials block")
        return AwsClients(*(credentials.get_client(service) for service in ("batch", "logs", "secretsmanager")))
