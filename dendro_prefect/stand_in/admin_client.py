"""A small client of the stand-in's admin API, for the CLI, the demo and the tests."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ..protocol.v06.models import CreateJobRequest
from ..protocol.v06.registration import registration_page
from .server import CENTRAL_FILE


class AdminError(RuntimeError):
    pass


# What a 0.6 job asks for unless told otherwise: it fits the compute slot a new compute client gets.
DEFAULT_REQUIRED_RESOURCES = {"numCpus": 1, "numGpus": 0, "memoryGb": 1, "timeSec": 600}
# A read is tried again after a dropped connection (a keep-alive connection the server closed as it was
# reused; a busy machine): reads are safe to repeat, writes are not.
READ_RETRIES = Retry(total=3, connect=3, read=3, status=0, other=0, backoff_factor=0.2, allowed_methods={"GET"})


class CentralHttp:
    """JSON calls to a central (the stand-in, or the real one in tests) as one signed-in client; a refusal
    raises AdminError with the central's detail."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url = url.rstrip("/")
        self._session = requests.Session()
        self._session.headers.update(headers)
        self._session.mount("http://", HTTPAdapter(max_retries=READ_RETRIES))

    @property
    def pubsub_origin(self) -> str:
        """Where its PubNub-compatible hub listens (host:port): a controller's `pubsub_origin`."""
        return urlsplit(self.url).netloc

    def _call(self, method: str, path: str, **kwargs: Any) -> dict:
        try:
            response = self._session.request(method, self.url + path, timeout=60, **kwargs)
        except requests.RequestException as error:
            raise AdminError(f"{method} {path}: central unreachable at {self.url} ({_cause(error)})") from None
        if not response.ok:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text[:200]
            raise AdminError(f"{method} {path}: HTTP {response.status_code}: {detail}")
        return response.json()

    def approve(self, resource_id: str, code: str, name: str = "dendro-prefect") -> None:
        """Register the compute resource with the resource code of its registration link."""
        self._call("POST", "/api/gui/compute_resources/register",
                   json={"computeResourceId": resource_id, "resourceCode": code, "name": name})

    def download(self, url: str) -> bytes:
        response = requests.get(url, timeout=60)
        if not response.ok:
            raise AdminError(f"download failed: HTTP {response.status_code}")
        return response.content


def _cause(error: requests.RequestException) -> str:
    """The innermost reason of a failed request (`ConnectionRefusedError: [Errno 111] Connection refused`),
    where requests' own message nests urllib3's pool and retry wrappers."""
    while error.__context__ is not None or error.__cause__ is not None:
        error = error.__cause__ or error.__context__
    if hasattr(error, "reason") and isinstance(error.reason, BaseException):
        return _cause(error.reason)
    return f"{type(error).__name__}: {error}"


class StandInAdmin(CentralHttp):
    def __init__(self, url: str, admin_token: str) -> None:
        super().__init__(url, {"dendro-admin-token": admin_token})

    @classmethod
    def from_data_dir(cls, data_dir: Path, wait: float = 0.0) -> "StandInAdmin":
        """Connect to the stand-in that serves `data_dir`, waiting up to `wait` seconds for it."""
        announcement = data_dir / CENTRAL_FILE
        deadline = time.monotonic() + wait
        while not announcement.exists():
            if time.monotonic() >= deadline:
                raise AdminError(f"no stand-in central serves {data_dir} (start one with `dendro-prefect stand-in serve`)")
            time.sleep(0.05)
        info = json.loads(announcement.read_text())
        return cls(info["url"], info["adminToken"])

    def resource(self, resource_id: str) -> dict:
        return self._call("GET", f"/api/admin/compute_resources/{resource_id}")["computeResource"]

    def set_apps(self, resource_id: str, apps: list[dict]) -> None:
        self._call("PUT", f"/api/admin/compute_resources/{resource_id}/apps", json={"apps": apps})

    def publish(self, resource_id: str, message: object) -> None:
        self._call("POST", f"/api/admin/compute_resources/{resource_id}/publish", json=message)

    def create_project(self, name: str) -> str:
        return self._call("POST", "/api/admin/projects", json={"name": name})["projectId"]

    def upload_file(self, project_id: str, file_name: str, data: bytes) -> str:
        return self._call("PUT", f"/api/admin/projects/{project_id}/files/{file_name}", data=data)["fileId"]

    def files(self, project_id: str) -> list[dict]:
        return self._call("GET", f"/api/admin/projects/{project_id}/files")["files"]

    def projects_for(self, name: str, jobs: int) -> list[str]:
        """A project id for each of `jobs` jobs created at once, a new project for every
        MAX_PENDING_OR_RUNNING_JOBS_WITHOUT_APPROVAL of them: beyond that many pending or running jobs
        of a project, the central (the real one too) holds new ones for the resource owner's approval."""
        from .service import MAX_PENDING_OR_RUNNING_JOBS_WITHOUT_APPROVAL as per_project

        projects = [self.create_project(name) for _ in range(-(-jobs // per_project))]
        return [projects[i // per_project] for i in range(jobs)]

    def create_job(self, request: dict) -> str:
        return self._call("POST", "/api/admin/jobs", json=request)["jobId"]

    def create_jobs(self, requests: list[dict]) -> list[str]:
        return self._call("POST", "/api/admin/job_batches", json={"jobs": requests})["jobIds"]

    def insert_raw_jobs(self, resource_id: str, documents: list) -> list[str]:
        """Store job documents of the resource unvalidated, as they are (for tests of malformed jobs);
        returns their ids (a document's jobId when it is a non-empty string)."""
        return self._call("POST", f"/api/admin/compute_resources/{resource_id}/raw_jobs",
                          json={"jobs": documents})["jobIds"]

    def raw_jobs(self, resource_id: str) -> dict[str, object]:
        """The resource's stored job documents by id, malformed ones too, without private keys."""
        return self._call("GET", f"/api/admin/compute_resources/{resource_id}/raw_jobs")["jobs"]

    def approve_job(self, job_id: str) -> None:
        """Approve a job held for approval, as the resource owner does in the GUI."""
        self._call("POST", f"/api/gui/jobs/{job_id}/approve")

    def jobs(self, resource_id: str | None = None) -> list[dict]:
        params = {"computeResourceId": resource_id} if resource_id else None
        return self._call("GET", "/api/admin/jobs", params=params)["jobs"]

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/api/admin/jobs/{job_id}")["job"]

    def delete_job(self, job_id: str) -> None:
        self._call("DELETE", f"/api/admin/jobs/{job_id}")

    def fail_requests(self, seconds: float, status: int = 503) -> None:
        """For `seconds` from now every compute-resource and job-side request answers `status`
        (blobs, admin and PubSub stay up); 0 ends an outage early."""
        self._call("POST", "/api/admin/faults/fail_requests", json={"seconds": seconds, "status": status})

    def set_pubsub(self, mode: str) -> None:
        """PubSub "up", "down" (an outage: 503, messages lost) or "duplicate-shuffled" (each message
        delivered twice, out of order)."""
        self._call("PUT", "/api/admin/faults/pubsub", json={"mode": mode})

    def output(self, job_id: str, output_name: str) -> bytes:
        """The content of a job output, or of `_console_output`."""
        job = self.job(job_id)
        if output_name == "_console_output":
            url = job.get("consoleOutputUrl")
        else:
            url = next((o.get("downloadUrl") for o in job["outputFiles"] if o["name"] == output_name), None)
        if not url:
            raise AdminError(f"job {job_id} has no {output_name} yet (status {job['status']})")
        return self.download(url)

    # --- the Dendro 0.6 service (stand_in/v06) ---------------------------------------------------------------

    def service_user(self) -> dict:
        """The signed-in user of the 0.6 service: `userId` and `apiKey` (what createJob and cancelJob carry)."""
        return self._call("GET", "/api/admin/v06/user")

    def create_service(self, service_name: str) -> None:
        self._call("POST", "/api/admin/v06/services", json={"serviceName": service_name})

    def add_service_app(self, service_name: str, spec: dict, spec_uri: str = "") -> dict:
        """Add the app of a `DendroAppSpecification` (an app's spec.json) to a service; returns the service app."""
        body = {"appSpecification": spec, "appSpecificationUri": spec_uri}
        return self._call("POST", f"/api/admin/v06/services/{service_name}/apps", json=body)["serviceApp"]

    def register_compute_client(self, service_name: str, compute_client_name: str) -> str:
        """Register a compute client as a user does on the registration page: press its button, read its code
        (the text to paste into the compute client)."""
        url = registration_page(self.url, service_name, compute_client_name)
        try:
            response = self._session.post(url, timeout=60)
        except requests.RequestException as error:
            raise AdminError(f"registration page unreachable at {url} ({_cause(error)})") from None
        found = re.search(r"<pre>([^<]+)</pre>", response.text) if response.ok else None
        if found is None:
            raise AdminError(f"registration page answered HTTP {response.status_code} without a code")
        return found.group(1)

    def compute_client(self, compute_client_id: str) -> dict:
        """A 0.6 compute client's document (without its private key)."""
        return self._call("GET", f"/api/admin/v06/compute_clients/{compute_client_id}")["computeClient"]

    def set_compute_slots(self, compute_client_id: str, slots: list[dict]) -> None:
        """What a 0.6 compute client can run (its owner sets this on its page of the web app)."""
        self._call("PUT", f"/api/admin/v06/compute_clients/{compute_client_id}/compute_slots",
                   json={"computeSlots": slots})

    def create_service_job(self, service_name: str, job_definition: dict, *,
                           required_resources: dict | None = None, target_compute_client_ids: list[str] | None = None,
                           job_dependencies: tuple[str, ...] = (), tags: tuple[str, ...] = (), batch_id: str = "",
                           secrets: tuple[dict, ...] = (), skip_cache: bool = False, rerun_failing: bool = False,
                           delete_failing: bool = False) -> str:
        """createJob as the signed-in user; returns the job's id (an earlier job's, when the service memoizes).
        A job without `target_compute_client_ids` is offered to no compute client (the service's rule)."""
        request = CreateJobRequest(
            serviceName=service_name, batchId=batch_id, tags=list(tags), jobDefinition=job_definition,
            requiredResources=required_resources or DEFAULT_REQUIRED_RESOURCES,
            targetComputeClientIds=target_compute_client_ids, secrets=list(secrets),
            jobDependencies=list(job_dependencies), skipCache=skip_cache, rerunFailing=rerun_failing,
            deleteFailing=delete_failing,
        )
        return self._call("POST", "/api/admin/v06/jobs", json=request.body())["jobId"]

    def service_jobs(self, service_name: str | None = None) -> list[dict]:
        """The 0.6 service's jobs (of one service), with their private keys."""
        params = {"serviceName": service_name} if service_name else None
        return self._call("GET", "/api/admin/v06/jobs", params=params)["jobs"]

    def service_job(self, job_id: str) -> dict:
        return self._call("GET", f"/api/admin/v06/jobs/{job_id}")["job"]

    def delete_service_job(self, job_id: str) -> None:
        self._call("DELETE", f"/api/admin/v06/jobs/{job_id}")
