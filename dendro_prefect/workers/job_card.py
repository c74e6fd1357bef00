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
    return _card(
        job, f"[Project {job.projectId} in Dendro]({project_url(central_url, job.projectId)})",
        [("Processor", f"`{job.processorName}`"), ("Run method", job.runMethod or "—"),
         ("Infrastructure", f"`{infrastructure_id}`")],
        [(f"Input `{item.name}`", item.fileName) for item in job.inputFiles]
        + [(f"Parameter `{p.name}`", SECRET_VALUE if p.name in secret else f"`{_cell(repr(p.value))}`")
           for p in job.inputParameters]
        + [(f"Output `{output.name}`", output.fileName) for output in job.outputFiles])


def _service_job_card(job: ServiceJob, api_url: str, infrastructure_id: str) -> str:
    """A Dendro 0.6 job: its page in the service's web app. Its secrets never reach a compute client."""
    definition = job.jobDefinition
    return _card(
        job, f"[Job {job.jobId} in Dendro]({api_url.rstrip('/')}/job/{quote(job.jobId, safe='')})",
        [("Service", f"`{job.serviceName}`"), ("App", f"`{definition.appName}`"),
         ("Processor", f"`{definition.processorName}`"), ("Infrastructure", f"`{infrastructure_id}`")],
        [(f"Input `{item.name}`", _cell(item.fileBaseName)) for item in definition.inputFiles]
        + [(f"Parameter `{p.name}`", f"`{_cell(repr(p.value))}`") for p in definition.parameters]
        + [(f"Output `{output.name}`", _cell(output.fileBaseName)) for output in definition.outputFiles])


def _card(job: Job, link: str, fields: list[tuple[str, str]], files_and_parameters: list[tuple[str, str]]) -> str:
    """The card of either protocol's job: its link, its fields, its resources and batch, then its inputs,
    parameters and outputs."""
    rows = list(fields)
    if (resources := job.requiredResources) is not None:
        rows.append(("Resources", f"{resources.numCpus} CPU, {resources.numGpus} GPU, {resources.memoryGb:g} GB, "
                                  f"{resources.timeSec:g} s"))
    if job.batchId:
        rows.append(("Batch", f"`{job.batchId}`"))
    lines = [f"# Dendro job {job.jobId}", "", link, "", "| Field | Value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows + files_and_parameters]
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
