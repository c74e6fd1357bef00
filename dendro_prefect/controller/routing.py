"""Which deployment runs a job, and with which parameters, job variables, name and tags."""

from __future__ import annotations

from pydantic import BaseModel

from ..apps import LoadedApp
from ..protocol.models import DendroJob, RunMethod

JOB_FLOW_NAME = "dendro-job"
DEFAULT_DEPLOYMENTS: dict[RunMethod, str] = {
    "local": f"{JOB_FLOW_NAME}/local",
    "slurm": f"{JOB_FLOW_NAME}/slurm",
    "aws_batch": f"{JOB_FLOW_NAME}/aws-batch",
    "kubernetes": f"{JOB_FLOW_NAME}/kubernetes",
}


def job_tag(job_id: str) -> str:
    """The tag that finds a job's flow run."""
    return f"job:{job_id}"


def resource_tag(compute_resource_id: str) -> str:
    """The tag that finds a compute resource's flow runs (resources may share a Prefect server)."""
    return f"resource:{compute_resource_id}"


class RoutingError(ValueError):
    """The job cannot be routed; the message is the one-line reason."""


class FlowRunPlan(BaseModel):
    """Everything `run_deployment` needs. The job private key is never part of it: the worker
    fetches the job from the central when it launches."""

    deployment: str
    run_method: str
    parameters: dict
    job_variables: dict
    name: str
    tags: list[str]


def plan_flow_run(job: DendroJob, app: LoadedApp, deployments: dict[str, str]) -> FlowRunPlan:
    if job.runMethod is None:
        raise RoutingError(f"job {job.jobId} has no runMethod")
    deployment = deployments.get(job.runMethod)
    if not deployment:
        raise RoutingError(f"no deployment for runMethod {job.runMethod}")
    job_variables: dict = {
        "app_name": app.name,
        "app_image": app.spec.appImage or None,
        "app_executable": app.executable,
    }
    if job.requiredResources is not None:
        job_variables.update(
            num_cpus=job.requiredResources.numCpus,
            num_gpus=job.requiredResources.numGpus,
            memory_gb=job.requiredResources.memoryGb,
            time_limit_sec=job.requiredResources.timeSec,
        )
    return FlowRunPlan(
        deployment=deployment,
        run_method=job.runMethod,
        parameters={"job_id": job.jobId},
        job_variables=job_variables,
        name=f"{app.name}/{job.processorName} {job.jobId}",
        tags=[f"app:{app.name}", f"processor:{job.processorName}", f"project:{job.projectId}",
              f"run-method:{job.runMethod}", job_tag(job.jobId), resource_tag(job.computeResourceId)],
    )
