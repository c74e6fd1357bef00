"""The Job and Secret of one Dendro job, from the work pool's Job manifest template (placeholders filled
by Prefect from the pool's variables) and the job's launch request. The job private key is only ever in
the Secret; the Job's container reads it through `secretKeyRef`."""

from __future__ import annotations

import base64
import copy
import re

from ..containers import WORKING_DIR_WRAPPER, container_environment, wrapped
from ..launch import LaunchRequest

MANAGED_BY = {"app.kubernetes.io/managed-by": "dendro-prefect"}
JOB_ID_LABEL = "dendro.org/job-id"
FLOW_RUN_LABEL = "prefect.io/flow-run-id"
ATTEMPT_LABEL = "dendro.org/attempt"
KEY_NAME = "JOB_PRIVATE_KEY"
TMP_VOLUME = "dendro-tmp"


def default_job_manifest() -> dict:
    """The base job template's Job manifest: editable per work pool in the Prefect UI."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"namespace": "{{ namespace }}", "labels": "{{ labels }}"},
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": "{{ ttl_seconds_after_finished }}",
            "template": {
                "metadata": {"labels": "{{ labels }}"},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": "{{ service_account_name }}",
                    "nodeSelector": "{{ node_selector }}",
                    "tolerations": "{{ tolerations }}",
                    "imagePullSecrets": "{{ image_pull_secrets }}",
                    "volumes": "{{ extra_volumes }}",
                    "containers": [{"name": "app", "volumeMounts": "{{ extra_volume_mounts }}"}],
                },
            },
        },
    }


def job_name(job_id: str, attempt: int = 0) -> str:
    """A DNS-1123 name from the Dendro job id (`<project>.<id>`), short enough for its pods' names."""
    name = "dendro-" + re.sub(r"[^a-z0-9-]", "-", job_id.lower())[:40]
    return name if attempt == 0 else f"{name}-r{attempt}"


def _pruned(value):
    """The manifest without the empty values that unset template variables leave."""
    if isinstance(value, dict):
        return {k: _pruned(v) for k, v in value.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def job_secret(request: LaunchRequest, name: str, namespace: str, labels: dict) -> dict:
    key = request.job_private_key.get_secret_value().encode()
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": f"{name}-key", "namespace": namespace, "labels": labels},
            "data": {KEY_NAME: base64.b64encode(key).decode()}}


def job_labels(request: LaunchRequest, attempt: int) -> dict:
    return {**MANAGED_BY, JOB_ID_LABEL: request.job_id, FLOW_RUN_LABEL: request.flow_run_id,
            ATTEMPT_LABEL: str(attempt)}


def render_job(template: dict, request: LaunchRequest, attempt: int, active_deadline_sec: float | None) -> dict:
    """The Job of one attempt: the template with the job's name, labels, app container and resources."""
    if not request.app_image:
        raise ValueError(f"app {request.app_name} has no appImage to run on Kubernetes")
    manifest = _pruned(copy.deepcopy(template))
    name = job_name(request.job_id, attempt)
    labels = job_labels(request, attempt)
    metadata = manifest.setdefault("metadata", {})
    metadata["name"] = name
    metadata["namespace"] = metadata.get("namespace") or "default"
    metadata["labels"] = {**metadata.get("labels", {}), **labels}
    spec = manifest.setdefault("spec", {})
    spec["backoffLimit"] = 0
    if active_deadline_sec:
        spec["activeDeadlineSeconds"] = int(active_deadline_sec)
    pod = spec.setdefault("template", {})
    pod_metadata = pod.setdefault("metadata", {})
    pod_metadata["labels"] = {**pod_metadata.get("labels", {}), **labels}
    pod_spec = pod.setdefault("spec", {})
    pod_spec["restartPolicy"] = "Never"
    pod_spec["volumes"] = [*pod_spec.get("volumes", []), {"name": TMP_VOLUME, "emptyDir": {}}]
    containers = pod_spec.setdefault("containers", [{"name": "app"}])
    container = containers[0]
    env = container_environment(request)
    if attempt > 0:  # the job told the central it was running; a new attempt must be let say it again
        env["DENDRO_FORCE_STATUS_UPDATES"] = "1"
    quantities = {"cpu": str(max(request.num_cpus, 1)), "memory": f"{max(int(request.memory_gb * 1024), 16)}Mi"}
    if request.num_gpus > 0:
        quantities["nvidia.com/gpu"] = str(request.num_gpus)
    container.update(
        image=request.app_image,
        command=wrapped(WORKING_DIR_WRAPPER, request.app_argv),
        env=[*({"name": k, "value": v} for k, v in env.items()),
             {"name": KEY_NAME, "valueFrom": {"secretKeyRef": {"name": f"{name}-key", "key": KEY_NAME}}}],
        resources={"requests": dict(quantities), "limits": dict(quantities)},
        volumeMounts=[*container.get("volumeMounts", []), {"name": TMP_VOLUME, "mountPath": "/tmp"}],
    )
    return manifest
