"""The real dendro 0.6.22 SDK (in its own virtual environment, .venv-sdk06) runs a job of the stand-in's 0.6
service API.

The stand-in runs as a real process with a service, the hello_world app (apps/hello_world)
and a compute client registered through its registration page. The test plays the compute client with our
`ServiceClient` (the job is offered to it, it claims it `starting`), then launches the app as a plain process
with the environment dendro 0.6.22's `_start_job.py` gives a job; the SDK does the rest (running, its
monitors, the output upload, completed or failed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from dendro_prefect.protocol.v06.client import ServiceClient
from dendro_prefect.protocol.v06.models import ServiceJob
from dendro_prefect.protocol.v06.registration import read_registration_code
from tests.v06_service import APP_DIR, RESOURCES, SERVICE, count_characters, running_service


@pytest.fixture(scope="module")
def service(sdk06_bin, tmp_path_factory):
    """The stand-in with the app and one registered compute client; the input files' server."""
    with running_service(tmp_path_factory.mktemp("sdk06"), json.loads((APP_DIR / "spec.json").read_text())) as (
            admin, inputs, inputs_url):
        code = read_registration_code(admin.register_compute_client(SERVICE, "lab-prefect"))
        client = ServiceClient(admin.url, code.computeClientId, code.computeClientPrivateKey, retry_deadline=5)
        yield admin, client, inputs, inputs_url


def count_characters_job(admin, client: ServiceClient, input_url: str) -> str:
    return admin.create_service_job(SERVICE, count_characters(input_url),
                                    target_compute_client_ids=[client.compute_client_id], required_resources=RESOURCES)


def claim_and_run(client: ServiceClient, job_id: str, sdk06_bin: Path, job_dir: Path) -> subprocess.CompletedProcess:
    """What a compute client does with an offered job, as dendro 0.6.22's daemon does it (`_start_job`), less
    the container: claim it, look up its processor, launch the executable with the job's environment."""
    runnable, _ = client.runnable_jobs()
    job = ServiceJob.model_validate(next(j for j in runnable if j["jobId"] == job_id))
    client.set_job_status(job_id, job.jobPrivateKey, "starting")
    app = client.service_app(job.serviceName, job.jobDefinition.appName)
    executable = APP_DIR / app.appSpecification.processor(job.jobDefinition.processorName).executable
    working_dir = job_dir / "working"
    working_dir.mkdir(parents=True)  # the SDK makes only its `_dendro` in it
    env = dict(
        os.environ,
        PATH=f"{sdk06_bin}{os.pathsep}{os.environ['PATH']}",  # the SDK runs `python` and `dendro` from PATH
        PYTHONUNBUFFERED="1", JOB_ID=job_id, JOB_PRIVATE_KEY=job.jobPrivateKey, COMPUTE_CLIENT_ID=client.compute_client_id,
        PROCESSOR_EXECUTABLE=str(executable), DENDRO_API_URL=client.base_url,
        JOB_TIMEOUT_SEC=str(int(job.requiredResources.timeSec)),
        DENDRO_JOB_WORKING_DIR=str(working_dir), DENDRO_JOB_CLEANUP_DIR=str(working_dir),
    )
    try:
        return subprocess.run([str(sdk06_bin / "python"), str(executable)], env=env, cwd=job_dir,
                              capture_output=True, text=True, timeout=60)
    finally:
        wait_for_monitors(job_id)


def wait_for_monitors(job_id: str, timeout: float = 20) -> None:
    """The SDK's monitors (console output, resource log, job status) are detached processes that notice the job's
    end within a second and upload once more; wait for them (ours: stopped by their PIDs if they linger)."""
    deadline = time.monotonic() + timeout
    while (pids := monitor_pids(job_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    assert not pids, f"the job's monitors were still running after {timeout} s"


def monitor_pids(job_id: str) -> list[int]:
    marker = f"JOB_ID={job_id}".encode()
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0"):
                pids.append(int(environ.parent.name))
        except OSError:  # gone meanwhile, or not ours
            continue
    return pids


def redacted(finished: subprocess.CompletedProcess, key: str) -> str:
    """The job's output for a failure message, without the job key the SDK prints."""
    return (finished.stdout + finished.stderr).replace(key, "<job key>")


def test_real_sdk_runs_a_claimed_job_to_completed_with_its_output(service, sdk06_bin, tmp_path):
    admin, client, inputs, inputs_url = service
    text = "hello dendro 0.6 world\n"
    (inputs / "hello.txt").write_text(text)
    job_id = count_characters_job(admin, client, f"{inputs_url}/hello.txt")

    finished = claim_and_run(client, job_id, sdk06_bin, tmp_path / "job")

    job = ServiceJob.model_validate(admin.service_job(job_id))
    assert finished.returncode == 0 and job.status == "completed", (job.error, redacted(finished, job.jobPrivateKey))
    assert job.timestampStartingSec < job.timestampStartedSec < job.timestampFinishedSec
    output = job.outputFileResults[0]
    assert json.loads(admin.download(output.url)) == {"num_characters": len(text)}
    assert output.size == len(json.dumps({"num_characters": len(text)}))
    console = admin.download(job.consoleOutputUrl).decode()
    assert f"count_characters: {len(text)} characters" in console and f"[dendro] Job complete: {job_id}" in console
    assert requests.get(job.resourceUtilizationLogUrl, timeout=10).ok
    assert client.runnable_jobs() == ([], [])
    assert sorted(p.name for p in (tmp_path / "job" / "working").iterdir()) == ["_dendro", "tmp"]  # cleaned up


def test_real_sdk_reports_a_failing_job_failed_with_its_error(service, sdk06_bin, tmp_path):
    admin, client, _, inputs_url = service
    job_id = count_characters_job(admin, client, f"{inputs_url}/missing.txt")

    finished = claim_and_run(client, job_id, sdk06_bin, tmp_path / "job")

    job = ServiceJob.model_validate(admin.service_job(job_id))
    assert finished.returncode == 0, redacted(finished, job.jobPrivateKey)  # the SDK's parent ends well either way
    assert (job.status, job.error) == ("failed", "Error running job: return code 1")
    assert "InputFileDownloadError" in admin.download(job.consoleOutputUrl).decode()
