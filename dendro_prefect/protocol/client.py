"""The Dendro 0.2 central client: the only way our code talks to a 0.2 central service.

Compute-resource calls are signed as the protocol says; job-side calls carry the job private key. Retries
and errors are the transport's (transport.py), shared with the 0.6 client.
"""

from __future__ import annotations

from typing import Any

from .models import ComputeResourceApp, ComputeResourceSpec, JobStatus, PubsubSubscription, parse
from .signing import compute_resource_headers
from .transport import CentralError, Transport

__all__ = ["CentralClient", "CentralError"]


class CentralClient(Transport):
    def __init__(
        self,
        central_url: str,
        compute_resource_id: str | None = None,
        private_key: str | None = None,
        *,
        request_timeout: float = 30.0,
        retry_deadline: float = 60.0,
    ) -> None:
        super().__init__(central_url, request_timeout=request_timeout, retry_deadline=retry_deadline)
        self.central_url = self.base_url
        self.compute_resource_id = compute_resource_id
        self._private_key = private_key

    def __repr__(self) -> str:
        return f"CentralClient({self.central_url!r}, compute_resource_id={self.compute_resource_id!r})"

    def _compute_resource_request(self, method: str, endpoint: str, json_body: Any = None) -> dict:
        if not self.compute_resource_id or not self._private_key:
            raise CentralError("this client has no compute resource id and key")
        path = f"/api/compute_resource/compute_resources/{self.compute_resource_id}/{endpoint}"
        headers = compute_resource_headers(path, self.compute_resource_id, self._private_key)
        return self.request(method, path, headers, json_body)

    # --- compute-resource side -----------------------------------------------------------------------

    def get_apps(self) -> list[ComputeResourceApp]:
        answer = self._compute_resource_request("GET", "apps")
        return parse(list[ComputeResourceApp], answer.get("apps"), "apps list")

    def get_pubsub_subscription(self) -> PubsubSubscription:
        answer = self._compute_resource_request("GET", "pubsub_subscription")
        return parse(PubsubSubscription, answer.get("subscription"), "pubsub subscription")

    def get_unfinished_jobs(self) -> list[dict]:
        """Raw job documents: callers parse each one alone so that one bad job spoils no other."""
        answer = self._compute_resource_request("GET", "unfinished_jobs")
        jobs = answer.get("jobs")
        if not isinstance(jobs, list):
            raise CentralError("GET unfinished_jobs: answer has no list of jobs")
        return jobs

    def put_spec(self, spec: ComputeResourceSpec) -> None:
        self._compute_resource_request("PUT", "spec", {"spec": spec.model_dump(mode="json", exclude_none=True)})

    # --- job side --------------------------------------------------------------------------------------

    def set_job_status(
        self, job_id: str, job_private_key: str, status: JobStatus, error: str | None = None,
        *, retry_deadline: float | None = None,
    ) -> None:
        body: dict[str, Any] = {"status": status}
        if error is not None:
            body["error"] = " ".join(error.split())  # a reason is one line, whatever it quotes
        path = f"/api/processor/jobs/{job_id}/status"
        self.request("PUT", path, {"job-private-key": job_private_key}, body, retry_deadline)

    def get_job_status(self, job_id: str, job_private_key: str, *,
                       retry_deadline: float | None = None) -> JobStatus | None:
        """None when the job was deleted."""
        path = f"/api/processor/jobs/{job_id}/status"
        return self.request("GET", path, {"job-private-key": job_private_key}, retry_deadline=retry_deadline).get("status")

