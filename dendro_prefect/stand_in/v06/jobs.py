"""The 0.6 service stand-in's calls on jobs as users make them: createJob, getJob, findJobs, cancelJob
(and deleting, an admin call here), with the rules and words of requestHandlers.ts.

What the service does that may surprise, followed here:
- createJob memoizes across users: the newest job of the service with the same definition hash is answered
  instead of a new one, whatever its status (pending, running, failed, even canceled), unless `skipCache`, or
  `rerunFailing` and it failed (`deleteFailing` then deletes it). The tags of the request are added to the
  job found, but the job answered is the one read before that (without them). A jobStatusChanged hint is
  published for it, "as though the status has changed".
- A job's definition is stored with its inputs, outputs and parameters ordered by name (the service sorts
  them in place to hash them).
- The definition check requires every input of the processor by its exact name, so a processor's list
  input (`name[0]`, `name[1]`, ...) cannot be given at all.
- cancelJob only marks the job `canceled`: its status stays, no hint is published, and the service still
  offers a canceled pending job to compute clients. The job's own SDK does not look at `canceled` either.
- findJobs with a list of statuses, or with an empty list of tags, finds nothing (MongoDB compares the
  status with the whole list, and `$all: []` matches no document).
"""

from __future__ import annotations

import time

from ...protocol.v06.models import (
    CancelJobRequest,
    CreateJobRequest,
    FindJobsRequest,
    GetJobRequest,
    JobDefinition,
)
from .files import file_url
from .job_hash import job_definition_hash, normalized_job_definition
from .service import Caller, ServiceError, ServiceStandIn, job_with_key, may, public_job, same_secret
from .store import ServiceStore, random_id

FINISHED_STATUSES = ("completed", "failed")


def create_job(stand_in: ServiceStandIn, request: CreateJobRequest, caller: Caller) -> dict:
    store = stand_in.store
    if not caller.token:
        raise ServiceError(400, "User API token must be provided")
    user_id = request.userId
    if not user_id:
        user = store.user_for_api_key(caller.token)
        if user is None:
            raise ServiceError(401, "Unauthorized - no user for token")
        user_id = user["userId"]
    elif not stand_in.has_api_key(user_id, caller.token):
        raise ServiceError(401, "Unauthorized")
    service = stand_in.service(request.serviceName, status=400)
    if not may(service, user_id, "createJobs"):
        raise ServiceError(401, "This user is not allowed to create jobs for this service")
    definition = request.jobDefinition
    app = store.service_app(request.serviceName, definition.appName)
    if app is None:
        raise ServiceError(400, f"Service app not found: {definition.appName}")
    try:
        check_job_definition(definition, app)
    except ValueError as mismatch:
        raise ServiceError(400, f"Job definition is not compatible with app: {mismatch}") from None
    # As sent: an optional field left out stays out of the hash.
    normalized = normalized_job_definition(definition.model_dump(mode="json", exclude_unset=True))
    definition_hash = job_definition_hash(normalized)

    if not request.skipCache:
        found = store.latest_job_with_hash(request.serviceName, definition_hash)
        if found is not None and found["status"] == "failed" and request.rerunFailing:
            if request.deleteFailing:
                store.delete_jobs([found["jobId"]])
        elif found is not None:
            new_tags = [tag for tag in request.tags if tag not in found["tags"]]
            if new_tags:
                store.update_job(found["jobId"], {"tags": found["tags"] + new_tags})
            stand_in.job_status_changed(found, found["status"])
            return {"type": "createJobResponse", "job": public_job(found)}

    job_id = random_id(20)

    def url(output_name: str, file_base_name: str) -> str:
        return file_url(caller.base_url, request.serviceName, definition.appName, definition.processorName, job_id,
                        output_name, file_base_name)

    now = time.time()
    job = {
        "jobId": job_id,
        "jobPrivateKey": random_id(32),
        "serviceName": request.serviceName,
        "userId": user_id,
        "batchId": request.batchId,
        "tags": request.tags,
        "jobDefinition": normalized,
        "jobDefinitionHash": definition_hash,
        "jobDependencies": request.jobDependencies,
        "requiredResources": request.requiredResources.model_dump(mode="json"),
        "targetComputeClientIds": request.targetComputeClientIds,
        "secrets": [secret.model_dump(mode="json") for secret in request.secrets],
        "inputFileUrlList": [f["url"] for f in normalized["inputFiles"]],
        "outputFileUrlList": [],
        "outputFileResults": [
            {"name": o["name"], "fileBaseName": o["fileBaseName"],
             "url": "" if o.get("urlDeterminedAtRuntime") else url(o["name"], o["fileBaseName"]), "size": None}
            for o in normalized["outputFiles"]
        ],
        "consoleOutputUrl": url("console_output", "output.txt"),
        "resourceUtilizationLogUrl": url("resource_utilization_log", "log.jsonl"),
        "timestampCreatedSec": now,
        "timestampStartingSec": None,
        "timestampStartedSec": None,
        "timestampFinishedSec": None,
        "timestampUpdatedSec": now,
        "canceled": False,
        "status": "pending",
        "isRunnable": dependencies_completed(store, request.jobDependencies),
        "error": None,
        "computeClientId": None,
        "computeClientName": None,
        "computeClientUserId": None,
        "imageUri": None,
    }
    store.insert_job(job)
    stand_in.publish({"type": "newPendingJob", "serviceName": job["serviceName"], "jobId": job_id})
    return {"type": "createJobResponse", "job": public_job(job)}


def check_job_definition(definition: JobDefinition, app: dict) -> None:
    """`validateJobDefinitionForServiceApp`, raising ValueError with its words (parameter values are not
    checked against their types, as there)."""
    specification = app["appSpecification"]
    if definition.appName != app["appName"]:
        raise ValueError("Mismatch between jobDefinition.appName and app.appName")
    if definition.appName != specification["name"]:
        raise ValueError("Mismatch between jobDefinition.appName and app.appSpecification.name")
    processor = next((p for p in specification["processors"] if p["name"] == definition.processorName), None)
    if processor is None:
        raise ValueError(f"Processor not found in app: {definition.processorName}")
    for kind, declared, given in (("input", processor["inputs"], definition.inputFiles),
                                  ("output", processor["outputs"], definition.outputFiles)):
        given_names = {item.name for item in given}
        declared_names = {item["name"] for item in declared}
        for item in declared:
            if item["name"] not in given_names:
                raise ValueError(f"Required {kind} not found in job definition: {item['name']}")
        for item in given:
            if item.name not in declared_names:
                raise ValueError(f"{kind.capitalize()} not found in app specification: {item.name}")
    given_parameters = {p.name for p in definition.parameters}
    for parameter in processor["parameters"]:
        if parameter["name"] not in given_parameters and "defaultValue" not in parameter:
            raise ValueError(f"Required parameter not found in job definition: {parameter['name']}")
    declared_parameters = {p["name"] for p in processor["parameters"]}
    for parameter in definition.parameters:
        if parameter.name not in declared_parameters:
            raise ValueError(f"Parameter not found in app specification: {parameter.name}")


def dependencies_completed(store: ServiceStore, job_ids: list[str]) -> bool:
    """`checkJobRunnable`: every job depended on exists and has completed (one deleted or failed never will)."""
    return all((job := store.job(job_id)) is not None and job["status"] == "completed" for job_id in job_ids)


def get_job(stand_in: ServiceStandIn, request: GetJobRequest, caller: Caller) -> dict:
    """An unknown job is an answer without `job`, not an error: that is how a client tells a deleted job."""
    job = stand_in.store.job(request.jobId)
    if job is None:
        return {"type": "getJobResponse"}
    if not request.includePrivateKey:
        return {"type": "getJobResponse", "job": public_job(job)}
    if not request.computeClientId:
        raise ServiceError(400, "computeClientId must be provided if includePrivateKey is true")
    if job["computeClientId"] != request.computeClientId:
        raise ServiceError(401, "Mismatch between computeClientId in request and job")
    compute_client = stand_in.store.compute_client(request.computeClientId)
    if compute_client is None or not same_secret(compute_client["computeClientPrivateKey"], caller.token):
        raise ServiceError(401, "Unauthorized")
    return {"type": "getJobResponse", "job": job_with_key(job)}


def find_jobs(stand_in: ServiceStandIn, request: FindJobsRequest, caller: Caller) -> dict:
    narrowing = (request.userId, request.computeClientId, request.jobId, request.processorName, request.serviceName,
                 request.inputFileUrl, request.outputFileUrl, request.batchId)
    if not any(narrowing) and request.tags is None:
        raise ServiceError(400, "Not enough info provided in request for query for jobs")
    conditions = [
        (request.userId, lambda job: job["userId"] == request.userId),
        (request.jobId, lambda job: job["jobId"] == request.jobId),
        (request.processorName, lambda job: job["jobDefinition"]["processorName"] == request.processorName),
        (request.computeClientId, lambda job: job["computeClientId"] == request.computeClientId),
        (request.batchId, lambda job: job["batchId"] == request.batchId),
        (request.tags is not None, lambda job: bool(request.tags) and set(request.tags) <= set(job["tags"])),
        (request.serviceName, lambda job: job["serviceName"] == request.serviceName),
        (request.appName, lambda job: job["jobDefinition"]["appName"] == request.appName),
        (request.inputFileUrl, lambda job: request.inputFileUrl in job["inputFileUrlList"]),
        (request.outputFileUrl, lambda job: request.outputFileUrl in job["outputFileUrlList"]),
        (request.status, lambda job: job["status"] == request.status),
    ]
    jobs = [job for job in stand_in.store.jobs() if all(test(job) for given, test in conditions if given)]
    jobs.sort(key=lambda job: (job.get("timestampUpdatedSec") or 0, job["timestampCreatedSec"]), reverse=True)
    if request.limit:
        jobs = jobs[:request.limit]
    return {"type": "findJobsResponse", "jobs": [public_job(job) for job in jobs]}


def cancel_job(stand_in: ServiceStandIn, request: CancelJobRequest, caller: Caller) -> dict:
    job = stand_in.store.job(request.jobId)
    if job is None:
        raise ServiceError(404, "Job not found")
    if not stand_in.has_api_key(job["userId"], caller.token):
        raise ServiceError(401, "Unauthorized")
    if job["status"] in FINISHED_STATUSES:
        raise ServiceError(400, "Job is already completed or failed")
    stand_in.store.update_job(request.jobId, {"canceled": True})
    return {"type": "cancelJobResponse"}
