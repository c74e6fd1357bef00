"""The job card: a markdown artifact on each flow run that says which Dendro job it is and links back
to the job's project at the central, so an admin in the Prefect UI can find the job in Dendro.

It carries no secret: no keys, and no value of a parameter marked secret (in the job or its
processor's spec).
"""

from __future__ import annotations

import re
from urllib.parse import quote

from prefect.client.schemas.actions import ArtifactCreate

from ..protocol.models import DendroJob

SECRET_VALUE = "(secret)"


def job_card_key(job_id: str) -> str:
    """The artifact's key (Prefect allows lowercase letters, digits and dashes): it names the card on
    Prefect's Artifacts page."""
    return "dendro-job-" + re.sub(r"[^a-z0-9]+", "-", job_id.lower()).strip("-")


def project_url(central_url: str, project_id: str) -> str:
    """The project's page in the Dendro web app (the central serves both the API and the app)."""
    return f"{central_url.rstrip('/')}/project/{quote(project_id, safe='')}"


def job_card(job: DendroJob, central_url: str, infrastructure_id: str) -> str:
    secret = {p.name for p in job.processorSpec.parameters if p.secret}
    secret |= {p.name for p in job.inputParameters if p.secret}
    resources = job.requiredResources
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
    ]
    if resources is not None:
        lines.append(f"| Resources | {resources.numCpus} CPU, {resources.numGpus} GPU, {resources.memoryGb:g} GB, "
                     f"{resources.timeSec:g} s |")
    if job.batchId:
        lines.append(f"| Batch | `{job.batchId}` |")
    for item in job.inputFiles:
        lines.append(f"| Input `{item.name}` | {item.fileName} |")
    for parameter in job.inputParameters:
        value = SECRET_VALUE if parameter.name in secret else f"`{_cell(repr(parameter.value))}`"
        lines.append(f"| Parameter `{parameter.name}` | {value} |")
    for output in job.outputFiles:
        lines.append(f"| Output `{output.name}` | {output.fileName} |")
    return "\n".join(lines) + "\n"


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
