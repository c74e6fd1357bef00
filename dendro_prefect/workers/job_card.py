"""The job card: a markdown artifact on each flow run that says which Dendro job it is and links back
to the job's project at the central (0.2) or its page at the service (0.6), so an admin in the Prefect UI can find the job in Dendro.

It carries no secret: no keys, and no value of a parameter marked secret (in the job or its
processor's spec).
"""

from __future__ import annotations

import re
from urllib.parse import quote

from prefect.client.schemas.actions import ArtifactCreate

from ..central_jobs import Job
from ..protocol.v06.models import ServiceJob

SECRET_VALUE = "(secret)"


def job_card_key(job_id: str) -> str:
    """The artifact's key (Prefect allows lowercase letters, digits and dashes): it names the card on
    Prefect's Artifacts page."""
    return "dendro-job-" + re.sub(r"[^a-z0-9]+", "-", job_id.lower()).strip("-")


def project_url(central_url: str, project_id: str) -> str:
    """The project's page in the Dendro web app (the central serves both the API and the app)."""
    return f"{central_url.rstrip('/')}/project/{quote(project_id, safe='')}"


def job_card(job: Job, central_url: str, infrastructure_id: str) -> str:
    if isinstance(job, ServiceJob):
        return _service_job_card(job, central_url, infrastructure_id)
    secret = {p.name for p in job.processorSpec.parameters if p.secret}
    secret |= {p.name for p in job.inputParameters if p.secret}
    lines = [
        f"# Dendro job {job.jobId}",
        "",
        f"[Project {job.projectId} in Dendro]({project_url(central_url, job.projectId)})",
        "",
        "| Field | Value |",
        "|---|---|",
        f"| Processor | `{job.processorName}` |",
        f"| Run method | {job.runMethod or '—'} |",
        f"| Infrastructure | `{infrastructure_id}` |",
        *_resources_and_batch(job),
    ]
    for item in job.inputFiles:
        lines.append(f"| Input `{item.name}` | {item.fileName} |")
    for parameter in job.inputParameters:
        value = SECRET_VALUE if parameter.name in secret else f"`{_cell(repr(parameter.value))}`"
        lines.append(f"| Parameter `{parameter.name}` | {value} |")
    for output in job.outputFiles:
        lines.append(f"| Output `{output.name}` | {output.fileName} |")
    return "\n".join(lines) + "\n"


def _service_job_card(job: ServiceJob, api_url: str, infrastructure_id: str) -> str:
    """A Dendro 0.6 job: its page in the service's web app. Its secrets never reach a compute client."""
    definition = job.jobDefinition
    lines = [
        f"# Dendro job {job.jobId}",
        "",
        f"[Job {job.jobId} in Dendro]({api_url.rstrip('/')}/job/{quote(job.jobId, safe='')})",
        "",
        "| Field | Value |",
        "|---|---|",
        f"| Service | `{job.serviceName}` |",
        f"| App | `{definition.appName}` |",
        f"| Processor | `{definition.processorName}` |",
        f"| Infrastructure | `{infrastructure_id}` |",
        *_resources_and_batch(job),
    ]
    for item in definition.inputFiles:
        lines.append(f"| Input `{item.name}` | {_cell(item.fileBaseName)} |")
    for parameter in definition.parameters:
        lines.append(f"| Parameter `{parameter.name}` | `{_cell(repr(parameter.value))}` |")
    for output in definition.outputFiles:
        lines.append(f"| Output `{output.name}` | {_cell(output.fileBaseName)} |")
    return "\n".join(lines) + "\n"


def _resources_and_batch(job: Job) -> list[str]:
    lines = []
    if (resources := job.requiredResources) is not None:
        lines.append(f"| Resources | {resources.numCpus} CPU, {resources.numGpus} GPU, {resources.memoryGb:g} GB, "
                     f"{resources.timeSec:g} s |")
    if job.batchId:
        lines.append(f"| Batch | `{job.batchId}` |")
    return lines


def _cell(text: str) -> str:
    """Text that stays inside its table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


async def publish_job_card(client, job_run) -> None:
    """The run's link back to its Dendro job, as a markdown artifact: off the launch's path, and a failure is
    only a warning in the run's log."""
    job = job_run.job
    try:
        await client.create_artifact(ArtifactCreate(
            key=job_card_key(job.jobId), type="markdown", flow_run_id=job_run.flow_run.id,
            description=f"Dendro job {job.jobId}",
            data=job_card(job, job_run.central.config.central_url, job_run.infrastructure_id)))
    except Exception as error:
        job_run.logger.warning("Job %s: no job card in Prefect: %s", job.jobId, error)
