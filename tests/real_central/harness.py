"""Start the real Dendro 0.2.17 central (serve.py, in .venv-central) on a free loopback port, and speak its
GUI routes as the Dendro web app does for a signed-in user.

`RealCentral` has the methods of the stand-in's admin client (`StandInAdmin`) that the tests and
`tests.stack.running_controller` use, so a test runs against either: `approve` registers a compute
resource with its resource code, `create_job` creates a job in a project set to the request's compute
resource, errors raise `AdminError` naming the HTTP status. `approve_job` is the owner's approval of a job
held for approval.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import pytest
import requests

from dendro_prefect.child_processes import stop_process
from dendro_prefect.stand_in.admin_client import AdminError, CentralHttp

REPO = Path(__file__).resolve().parents[2]
SERVE = Path(__file__).resolve().parent / "serve.py"
ANNOUNCEMENT = "real-central.json"


def central_python() -> Path:
    """The python of the venv with the real central's routers (made by scripts/test.sh)."""
    venv = Path(os.environ.get("DENDRO_CENTRAL_VENV", REPO / ".venv-central"))
    python = venv / "bin" / "python"
    if not python.exists():
        pytest.fail(f"no venv of the real Dendro central in {venv}: run `bash scripts/test.sh`, which creates it")
    return python


class RealCentral(CentralHttp):
    """A client of the real central's GUI routes, signed in as the user of `github_access_token`."""

    def __init__(self, url: str, github_access_token: str) -> None:
        super().__init__(url, {"github-access-token": github_access_token})
        self._project_resources: dict[str, str] = {}

    def resource(self, resource_id: str) -> dict:
        return self._call("GET", f"/api/gui/compute_resources/{resource_id}")["computeResource"]

    def set_apps(self, resource_id: str, apps: list[dict]) -> None:
        self._call("PUT", f"/api/gui/compute_resources/{resource_id}/apps", json={"apps": apps})

    # --- projects and files ----------------------------------------------------------------------------

    def create_project(self, name: str) -> str:
        return self._call("POST", "/api/gui/projects", json={"name": name})["projectId"]

    def set_project_resource(self, project_id: str, resource_id: str) -> None:
        """The project's compute resource, where its jobs go (the GUI's project settings)."""
        if self._project_resources.get(project_id) != resource_id:
            self._call("PUT", f"/api/gui/projects/{project_id}/compute_resource_id",
                      json={"computeResourceId": resource_id})
            self._project_resources[project_id] = resource_id

    def upload_file(self, project_id: str, file_name: str, data: bytes) -> str:
        """As the GUI uploads: the central makes the file and a signed upload URL of its bucket, then PUT."""
        answer = self._call("POST", f"/api/gui/projects/{project_id}/create_file_and_initiate_upload",
                           json={"fileName": file_name, "size": len(data)})
        response = requests.put(answer["uploadUrl"], data=data, timeout=60)
        if not response.ok:
            raise AdminError(f"upload of {file_name}: HTTP {response.status_code}")
        return answer["fileId"]

    def files(self, project_id: str) -> list[dict]:
        return self._call("GET", f"/api/gui/projects/{project_id}/files")["files"]

    # --- jobs ----------------------------------------------------------------------------------------------

    def create_job(self, request: dict) -> str:
        """`POST /api/gui/jobs`; a `computeResourceId` in the request becomes the project's compute resource
        first (the central takes a job's resource from its project)."""
        request = dict(request)
        resource_id = request.pop("computeResourceId", None)
        if resource_id:
            self.set_project_resource(request["projectId"], resource_id)
        return self._call("POST", "/api/gui/jobs", json=request)["jobId"]

    def create_jobs(self, requests_: list[dict]) -> list[str]:
        return [self.create_job(request) for request in requests_]

    def approve_job(self, job_id: str) -> None:
        self._call("POST", f"/api/gui/jobs/{job_id}/approve")

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/api/gui/jobs/{job_id}")["job"]

    def jobs(self, project_id: str) -> list[dict]:
        return self._call("GET", f"/api/gui/projects/{project_id}/jobs")["jobs"]

    def delete_job(self, job_id: str) -> None:
        self._call("DELETE", f"/api/gui/jobs/{job_id}")

    def output(self, job_id: str, output_name: str) -> bytes:
        """The content of a job output (the project file it became), or of `_console_output`."""
        job = self.job(job_id)
        if output_name == "_console_output":
            return self.download(job["consoleOutputUrl"])
        output = next((o for o in job["outputFiles"] if o["name"] == output_name), None)
        if output is None:
            raise AdminError(f"job {job_id} has no output {output_name}")
        file = self._call("GET", f"/api/gui/projects/{job['projectId']}/files/{quote(output['fileName'])}")["file"]
        if not file["content"].startswith("url:"):
            raise AdminError(f"output {output_name} of job {job_id} is {file['content']!r} (status {job['status']})")
        return self.download(file["content"].removeprefix("url:"))


@contextmanager
def running_real_central(data_dir: Path, startup_timeout: float = 60.0) -> Iterator[RealCentral]:
    """The real central on a free loopback port, its log in `data_dir/real-central.log`; stopped (by its PID)
    after."""
    data_dir.mkdir(parents=True, exist_ok=True)
    announcement = data_dir / ANNOUNCEMENT
    announcement.unlink(missing_ok=True)
    log_path = data_dir / "real-central.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([str(central_python()), str(SERVE), "--data-dir", str(data_dir)],
                                   stdout=log, stderr=subprocess.STDOUT, cwd=data_dir)
    try:
        deadline = time.monotonic() + startup_timeout
        while not announcement.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise AdminError(f"the real central did not start; its log ends with:\n{tail}")
            time.sleep(0.05)
        info = json.loads(announcement.read_text())
        yield RealCentral(info["url"], info["githubAccessToken"])
    finally:
        stop_process(process, signal.SIGTERM, timeout=10)
