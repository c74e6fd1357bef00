"""Why a Batch job waits in RUNNABLE: the top complaint of Batch users, and AWS says why only in the
queue's and compute environments' status, which nobody looks at. Read them and say it in one line."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError


def why_runnable(batch: Any, queue_name: str, job: dict) -> str:
    """One line from the job queue and its compute environments. Blocking."""
    try:
        queues = batch.describe_job_queues(jobQueues=[queue_name]).get("jobQueues", [])
        if not queues:
            return f"its job queue {queue_name} does not exist"
        queue = queues[0]
        findings = []
        if queue.get("state") != "ENABLED" or queue.get("status") not in ("VALID", None):
            findings.append(f"job queue {queue_name} is {queue.get('state')}/{queue.get('status')}"
                            + (f" ({queue['statusReason']})" if queue.get("statusReason") else ""))
        order = [entry["computeEnvironment"] for entry in queue.get("computeEnvironmentOrder", [])]
        environments = batch.describe_compute_environments(computeEnvironments=order).get("computeEnvironments", []) \
            if order else []
        if not environments:
            findings.append(f"job queue {queue_name} has no compute environment")
        vcpus = _requested_vcpus(job)
        for environment in environments:
            name = environment.get("computeEnvironmentName", "?")
            state, status = environment.get("state"), environment.get("status")
            if state != "ENABLED" or status != "VALID":
                findings.append(f"compute environment {name} is {state}/{status}"
                                + (f" ({environment['statusReason']})" if environment.get("statusReason") else ""))
            max_vcpus = (environment.get("computeResources") or {}).get("maxvCpus")
            if vcpus and max_vcpus is not None and vcpus > max_vcpus:
                findings.append(f"the job asks for {vcpus} vCPUs, more than compute environment {name}'s "
                                f"maxvCpus {max_vcpus}")
        if not findings:
            findings.append("its queue and compute environments look healthy: it waits for capacity "
                            "(instances starting, or all vCPUs in use)")
        return "; ".join(findings)
    except (ClientError, BotoCoreError) as error:
        return f"AWS did not say why ({' '.join(str(error).split())[:200]})"


def _requested_vcpus(job: dict) -> int | None:
    for requirement in (job.get("container") or {}).get("resourceRequirements", []):
        if requirement.get("type") == "VCPU":
            return int(float(requirement["value"]))
    return None
