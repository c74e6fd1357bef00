"""The 0.6 service stand-in's calls that move jobs through their lives: getRunnableJobsForComputeClient (with
the compute client's private key) and setJobStatus (with the job's), as requestHandlers.ts has them.

What the service does, followed here, that a compute client must know:
- A job is offered only to compute clients it targets: its `targetComputeClientIds` holds the client's id or
  "*". A job with no targets (null, as createJob stores it when the request has none, or an empty list) is
  offered to no compute client at all: only a user can run it, through the service's getRunnableJob (which
  the stand-in does not serve).
- Offered are pending jobs with `isRunnable` (their dependencies completed) of the client's services, in the
  order of its `serviceNames`, newest first (of a random 100 per service when there are more), each only if
  it fits a free compute slot beside the client's running jobs and the jobs offered before it. With `jobId`
  only that job is looked for, without the capacity check and without the running jobs (unless `singleJob`).
  Canceled jobs are offered like any other.
- `starting` is the claim, an atomic pending -> starting: of two clients, the one that comes second is refused
  with 401 (the job names the other client) or, when both read it pending, with 500 "Failed to update job".
  It does not look at `isRunnable`, the targets or `canceled`.
- `running` only from starting (atomic too); `completed` only from running and without an error; `failed` from
  pending, starting or running and only with an error. Completed and failed are set without a condition, so
  nothing stops a second final status from overwriting the first.
- A completed job makes its dependants runnable once all their dependencies completed (each announced with a
  jobStatusChanged hint); a failed one leaves them pending and unrunnable for good.
"""

from __future__ import annotations

import random
import time

from ...protocol.v06.models import GetRunnableJobsForComputeClientRequest, SetJobStatusRequest
from .capacity import has_capacity_for
from .jobs import FINISHED_STATUSES, dependencies_completed
from .service import Caller, ServiceError, ServiceStandIn, job_with_key, may, same_secret

SAMPLE_SIZE = 100  # the service's `$sample` of pending jobs per service


def runnable_jobs(stand_in: ServiceStandIn, request: GetRunnableJobsForComputeClientRequest, caller: Caller) -> dict:
    compute_client = stand_in.authenticated_compute_client(request.computeClientId, caller.token)
    client_id = compute_client["computeClientId"]
    running = []
    if not request.jobId or request.singleJob:
        running = stand_in.store.jobs(statuses=("running", "starting"), compute_client_id=client_id)
    offered: list[dict] = []
    for service_name in compute_client["serviceNames"]:
        service = stand_in.service(service_name)
        if not may(service, compute_client["userId"], "processJobs"):
            raise ServiceError(401, f"This compute client is not allowed to process jobs for service: {service_name}")
        candidates = [job for job in stand_in.store.jobs(service_name=service_name, statuses=("pending",))
                      if job["isRunnable"] and _for_users(compute_client, job)
                      and (not request.jobId or job["jobId"] == request.jobId)]
        candidates = random.sample(candidates, min(SAMPLE_SIZE, len(candidates)))
        candidates.sort(key=lambda job: job["timestampCreatedSec"], reverse=True)
        candidates = [job for job in candidates if _targets(job, client_id)]
        if request.jobId:
            offered.extend(candidates)
            continue
        for job in candidates:
            if request.singleJob and offered:
                break
            if has_capacity_for(compute_client, job, running + offered):
                offered.append(job)
    return {"type": "getRunnableJobsForComputeClientResponse", "runnableJobs": [job_with_key(j) for j in offered],
            "runningJobs": [job_with_key(j) for j in running]}


def _targets(job: dict, compute_client_id: str) -> bool:
    """Whether the job targets the client (see the module's docstring: no targets, no client)."""
    targets = job.get("targetComputeClientIds") or []
    return compute_client_id in targets or "*" in targets


def _for_users(compute_client: dict, job: dict) -> bool:
    """A client with `processJobsForUsers` (even an empty list) takes only those users' jobs."""
    users = compute_client.get("processJobsForUsers")
    return users is None or job["userId"] in users


def set_job_status(stand_in: ServiceStandIn, request: SetJobStatusRequest, caller: Caller) -> dict:
    store = stand_in.store
    if not caller.token:
        raise ServiceError(400, "Job private key must be provided")
    job = store.job(request.jobId)
    if job is None:
        raise ServiceError(404, "Job not found")
    if not same_secret(job["jobPrivateKey"], caller.token):
        raise ServiceError(401, "Unauthorized: incorrect or missing job private key")
    compute_client = None
    if request.computeClientId:
        compute_client = store.compute_client(request.computeClientId)
        if compute_client is None:
            raise ServiceError(404, "Compute client not found")
        if job["computeClientId"]:
            if job["computeClientId"] != request.computeClientId:
                raise ServiceError(401, "Mismatch between computeClientId in request and job")
        elif job["status"] != "pending":
            raise ServiceError(400, "Job is not in pending status and the compute client is not set")
        elif request.status != "starting":
            raise ServiceError(400, "Trying to set job to a status other than starting when compute client is not set")
    now = time.time()
    if request.status == "starting":
        _claim(stand_in, job, request.computeClientId, compute_client, now)
    elif request.status == "running":
        if job["status"] != "starting":
            raise ServiceError(400, "Job is not in starting status")
        changes = {"status": "running", "timestampStartedSec": now, "timestampUpdatedSec": now}
        if not store.update_job(request.jobId, changes, if_status="starting"):
            raise ServiceError(500, "Failed to update job")
    elif request.status in FINISHED_STATUSES:
        _finish(stand_in, job, request, now)
    else:
        raise ServiceError(400, "Invalid status")
    stand_in.job_status_changed(job, request.status)
    return {"type": "setJobStatusResponse"}


def _claim(stand_in: ServiceStandIn, job: dict, compute_client_id: str, compute_client: dict | None,
           now: float) -> None:
    if job["status"] != "pending":
        raise ServiceError(400, f"Trying to start job. Job is not in pending status. Status is {job['status']}")
    service = stand_in.service(job["serviceName"])
    if compute_client is not None and not may(service, compute_client["userId"], "processJobs"):
        raise ServiceError(401, "This compute client is not allowed to process jobs for this service")
    changes = {
        "status": "starting",
        "computeClientId": compute_client_id,
        "computeClientName": compute_client["computeClientName"] if compute_client else "",
        "computeClientUserId": compute_client["userId"] if compute_client else None,
        "timestampStartingSec": now,
        "timestampUpdatedSec": now,
    }
    if not stand_in.store.update_job(job["jobId"], changes, if_status="pending"):
        raise ServiceError(500, "Failed to update job")


def _finish(stand_in: ServiceStandIn, job: dict, request: SetJobStatusRequest, now: float) -> None:
    store = stand_in.store
    if request.status == "completed":
        if job["status"] != "running":
            raise ServiceError(400, "Job is not in running status")
        if request.error:
            raise ServiceError(400, "Error should not be set for completed job")
    else:
        if job["status"] not in ("running", "starting", "pending"):
            raise ServiceError(400, f"Invalid status for failed job: {job['status']}")
        if not request.error:
            raise ServiceError(400, "Error must be set for failed job")
    changes = {"status": request.status, "timestampFinishedSec": now, "timestampUpdatedSec": now}
    if request.error is not None:
        changes["error"] = request.error
    store.update_job(job["jobId"], changes, unset=("error",) if request.error is None else ())
    if request.status != "completed":
        return
    for dependant in store.jobs(statuses=("pending",)):
        if (job["jobId"] in dependant["jobDependencies"] and not dependant["isRunnable"]
                and dependencies_completed(store, dependant["jobDependencies"])):
            store.update_job(dependant["jobId"], {"isRunnable": True})
            stand_in.job_status_changed(dependant, dependant["status"])
    urls = [o["url"] for o in job["outputFileResults"]] + [o["url"] for o in job.get("otherFileOutputs") or []]
    store.update_job(job["jobId"], {"outputFileUrlList": urls})
