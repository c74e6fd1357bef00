"""The central client: the only way our code talks to the Dendro central service.

Compute-resource calls are signed as the protocol says; job-side calls carry the job private key.
Transient failures (connection errors, timeouts, 429, 502-504) are retried with exponential backoff
until a deadline, the last try at the deadline itself, so a call survives an outage that ends before
`retry_deadline` seconds have passed since it began. Errors name the method, path and status, never a
key or a header that carries one; `CentralError.transient` says whether the central was unreachable
(worth trying again later) rather than refusing the request.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import requests

from .models import ComputeResourceApp, ComputeResourceSpec, JobStatus, PubsubSubscription, parse
from .signing import compute_resource_headers

logger = logging.getLogger(__name__)

TRANSIENT_STATUS_CODES = frozenset({429, 502, 503, 504})


class CentralError(RuntimeError):
    """A request to the central failed; `status_code` is None when no answer came. `transient`: the
    central was unreachable or overloaded until the retry deadline (no answer, 429, 502-504), so the
    same request may well succeed later; otherwise it answered and refused."""

    def __init__(self, message: str, status_code: int | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.transient = transient


class CentralClient:
    def __init__(
        self,
        central_url: str,
        compute_resource_id: str | None = None,
        private_key: str | None = None,
        *,
        request_timeout: float = 30.0,
        retry_deadline: float = 60.0,
    ) -> None:
        self.central_url = central_url.rstrip("/")
        self.compute_resource_id = compute_resource_id
        self._private_key = private_key
        self.request_timeout = request_timeout
        self.retry_deadline = retry_deadline
        self._session = requests.Session()

    def __repr__(self) -> str:
        return f"CentralClient({self.central_url!r}, compute_resource_id={self.compute_resource_id!r})"

    # --- transport ---------------------------------------------------------------------------------

    def _request(self, method: str, path: str, headers: dict[str, str], json_body: Any = None,
                 retry_deadline: float | None = None) -> dict:
        """`retry_deadline` (seconds) overrides the client's for this call; 0 tries once."""
        retry_deadline = self.retry_deadline if retry_deadline is None else retry_deadline
        deadline = time.monotonic() + retry_deadline
        delay = 0.25
        while True:
            failure: str
            status: int | None = None
            try:
                response = self._session.request(
                    method, self.central_url + path, headers=headers, json=json_body, timeout=self.request_timeout
                )
            except (UnicodeEncodeError, requests.exceptions.InvalidHeader):
                # a header (a malformed job's key) that HTTP cannot carry: no retry can help
                raise CentralError(f"{method} {path}: a header of the request cannot be sent") from None
            except requests.RequestException as error:
                failure = f"{type(error).__name__}"
            else:
                if response.ok:
                    try:
                        return response.json()
                    except ValueError:
                        raise CentralError(f"{method} {path}: answer is not JSON", response.status_code) from None
                status = response.status_code
                failure = f"HTTP {status}: {_detail(response)}"
                if status not in TRANSIENT_STATUS_CODES:
                    raise CentralError(f"{method} {path}: {failure}", status)
            left = deadline - time.monotonic()
            if left <= 0:
                raise CentralError(f"{method} {path}: {failure} (gave up after {retry_deadline:.0f} s)", status,
                                   transient=True)
            wait = min(delay, left)
            logger.warning("%s %s: %s; retrying in %.1f s", method, path, failure, wait)
            time.sleep(wait)
            delay = min(delay * 2, 8.0)

    def _compute_resource_request(self, method: str, endpoint: str, json_body: Any = None) -> dict:
        if not self.compute_resource_id or not self._private_key:
            raise CentralError("this client has no compute resource id and key")
        path = f"/api/compute_resource/compute_resources/{self.compute_resource_id}/{endpoint}"
        headers = compute_resource_headers(path, self.compute_resource_id, self._private_key)
        return self._request(method, path, headers, json_body)

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
        self._request("PUT", path, {"job-private-key": job_private_key}, body, retry_deadline)

    def get_job_status(self, job_id: str, job_private_key: str, *,
                       retry_deadline: float | None = None) -> JobStatus | None:
        """None when the job was deleted."""
        path = f"/api/processor/jobs/{job_id}/status"
        return self._request("GET", path, {"job-private-key": job_private_key}, retry_deadline=retry_deadline).get("status")


def _detail(response: requests.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    text = str(detail) if detail else response.reason or ""
    return text[:200]

