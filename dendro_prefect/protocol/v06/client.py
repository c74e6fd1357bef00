"""The Dendro 0.6 service client: flat `POST /api/<call>` requests with typed bodies, as dendro 0.6.22's
`common/api_requests.py` sends them. The compute client's calls carry its private key, a job's calls the
job's private key, each as `Authorization: Bearer <key>`; retries and errors are the transport's.

A job that another compute client of the same service claimed first is a `ClaimRefused`, not a failure:
`setJobStatus starting` is the service's atomic claim, and the loser is told so with a 400 or 500.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from ..models import parse
from ..transport import CentralError, ClaimRefused, Transport
from .models import (
    GetJobRequest,
    GetJobResponse,
    GetPubsubSubscriptionRequest,
    GetPubsubSubscriptionResponse,
    GetRunnableJobsForComputeClientRequest,
    GetRunnableJobsForComputeClientResponse,
    GetServiceAppRequest,
    GetServiceAppResponse,
    JobStatus,
    PubsubSubscription,
    Request,
    ServiceApp,
    SetJobStatusRequest,
    SetJobStatusResponse,
)

DEFAULT_API_URL = "https://dendro.vercel.app"
A = TypeVar("A", bound=BaseModel)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class ServiceClient(Transport):
    def __init__(self, api_url: str, compute_client_id: str, private_key: str, *, request_timeout: float = 30.0,
                 retry_deadline: float = 60.0) -> None:
        super().__init__(api_url, request_timeout=request_timeout, retry_deadline=retry_deadline)
        self.compute_client_id = compute_client_id
        self._private_key = private_key

    def __repr__(self) -> str:
        return f"ServiceClient({self.base_url!r}, compute_client_id={self.compute_client_id!r})"

    def call(self, request: Request, answer: type[A], headers: dict[str, str] | None = None,
             retry_deadline: float | None = None) -> A:
        """POST `request` to its endpoint (its type less `Request`) and parse the answer as `answer`."""
        name = request.type.removesuffix("Request")  # type: ignore[attr-defined]
        document = self.request("POST", f"/api/{name}", headers or {}, request.body(), retry_deadline)
        return parse(answer, document, f"{name} answer")

    # --- the compute client's calls -----------------------------------------------------------------------------

    def runnable_jobs(self, job_id: str | None = None) -> tuple[list[Any], list[Any]]:
        """(runnable, running) job documents: pending runnable jobs the service offers this client (targeted at
        it, fitting a free compute slot) and the jobs it has claimed that have not ended."""
        answer = self.call(GetRunnableJobsForComputeClientRequest(computeClientId=self.compute_client_id, jobId=job_id),
                           GetRunnableJobsForComputeClientResponse, bearer(self._private_key))
        return answer.runnableJobs, answer.runningJobs

    def pubsub_subscription(self) -> PubsubSubscription:
        request = GetPubsubSubscriptionRequest(computeClientId=self.compute_client_id)
        return self.call(request, GetPubsubSubscriptionResponse, bearer(self._private_key)).subscription

    def service_app(self, service_name: str, app_name: str) -> ServiceApp:
        request = GetServiceAppRequest(serviceName=service_name, appName=app_name)
        return self.call(request, GetServiceAppResponse).serviceApp

    # --- a job's calls ------------------------------------------------------------------------------------------

    def set_job_status(self, job_id: str, job_private_key: str, status: JobStatus, error: str | None = None, *,
                       retry_deadline: float | None = None) -> None:
        """A `starting` that the service refuses because the job is no longer ours to claim raises ClaimRefused."""
        request = SetJobStatusRequest(jobId=job_id, computeClientId=self.compute_client_id, status=status,
                                      error=" ".join(error.split()) if error is not None else None)
        try:
            self.call(request, SetJobStatusResponse, bearer(job_private_key), retry_deadline)
        except CentralError as refusal:
            if status != "starting" or refusal.transient:
                raise
            claimed_by = self._claimed_by(job_id)
            if claimed_by is None:
                raise
            raise ClaimRefused(f"job {job_id} was claimed by {claimed_by} first ({refusal})",
                               refusal.status_code) from None

    def _claimed_by(self, job_id: str) -> str | None:
        """Who holds a job this client could not claim ("another compute client", "nobody: it was deleted"),
        or None when the refusal had another cause."""
        job = self.job(job_id)
        if job is None:
            return "nobody: it was deleted"
        if job.get("status") != "pending" and job.get("computeClientId") != self.compute_client_id:
            return f"compute client {job.get('computeClientName') or job.get('computeClientId') or 'unknown'}"
        return None

    def job(self, job_id: str, *, retry_deadline: float | None = None) -> dict[str, Any] | None:
        """The job's public document (no key, no secrets), None when the service has no such job."""
        answer = self.call(GetJobRequest(jobId=job_id), GetJobResponse, retry_deadline=retry_deadline)
        return answer.job

    def get_job_status(self, job_id: str, job_private_key: str, *, retry_deadline: float | None = None) -> str | None:
        """The job's status, None when it was deleted (the same question as the 0.2 client's)."""
        job = self.job(job_id, retry_deadline=retry_deadline)
        return None if job is None else job.get("status")
