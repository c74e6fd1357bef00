"""One Batch job definition per app image, registered when missing and reused while its image matches
(the original daemon checks the image the same way), named after the app; and one of its own for a job
whose key comes from Secrets Manager (Batch reads `secrets` from job definitions only), removed with it."""

from __future__ import annotations

import re
from typing import Any

DEFINITION_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")
JOB_DEFINITION_PREFIX = "dendro-job-"  # the definitions of one job each


def is_of_one_job(arn: str) -> bool:
    """Whether a definition is one `register_for_job` made (its job's key is then a secret)."""
    return f":job-definition/{JOB_DEFINITION_PREFIX}" in arn


def definition_name(pattern: str, app_name: str) -> str:
    """The pool's naming pattern with `{app_name}` filled in, in the characters Batch allows."""
    return DEFINITION_NAME_CHARS.sub("-", pattern.format(app_name=app_name))[:128]


class JobDefinitions:
    def __init__(self, batch: Any, pattern: str, job_role_arn: str, extra_container_properties: dict,
                 tags: dict[str, str]) -> None:
        self._batch = batch
        self._pattern = pattern
        self._job_role_arn = job_role_arn
        self._extra = extra_container_properties
        self._tags = tags
        self._known: dict[tuple[str, str], str] = {}  # (name, image) → ARN

    def arn_for(self, app_name: str, image: str) -> str:
        """The ARN of an active definition of the app running `image`. Blocking."""
        name = definition_name(self._pattern, app_name)
        if (name, image) not in self._known:
            self._known[(name, image)] = self._find(name, image) or self._register(name, image)
        return self._known[(name, image)]

    def _find(self, name: str, image: str) -> str | None:
        found = []
        pages = self._batch.get_paginator("describe_job_definitions").paginate(jobDefinitionName=name, status="ACTIVE")
        for page in pages:
            found += [d for d in page["jobDefinitions"] if d.get("containerProperties", {}).get("image") == image]
        return max(found, key=lambda d: d["revision"])["jobDefinitionArn"] if found else None

    def register_for_job(self, job_id: str, image: str, secrets: list[dict], execution_role_arn: str) -> str:
        """A definition of one job, with the `secrets` Batch resolves through the execution role. Blocking."""
        return self._register(definition_name(JOB_DEFINITION_PREFIX + "{app_name}", job_id), image,
                              {"secrets": secrets, "executionRoleArn": execution_role_arn})

    def deregister(self, arn: str) -> None:
        """Deregister a definition made by `register_for_job` (never an app's shared one). Blocking."""
        self._batch.deregister_job_definition(jobDefinition=arn)

    def _register(self, name: str, image: str, more: dict | None = None) -> str:
        properties: dict = {
            "image": image,
            "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "2048"}],
            **self._extra,
            **(more or {}),
        }
        if self._job_role_arn:
            properties["jobRoleArn"] = self._job_role_arn
        request: dict = {"jobDefinitionName": name, "type": "container", "containerProperties": properties}
        if self._tags:
            request["tags"] = self._tags
        return self._batch.register_job_definition(**request)["jobDefinitionArn"]
