"""`dendro-prefect demo`: one real Dendro job from submitted to completed on this machine.

Starts the stand-in central, registers a compute resource with it, submits a letter_count job
(an app written with the real dendro SDK) and follows the job's status at the central until it ends.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import typer

from .central.admin_client import CentralAdmin
from .central.process import running_central
from .config import ComputeResourceConfig
from .protocol.client import CentralClient
from .protocol.signing import generate_keypair, make_resource_code

REPO = Path(__file__).resolve().parent.parent
APP_DIR = REPO / "apps" / "letter_count"
DEMO_TEXT = "Dendro runs neurophysiology analyses; dendro-prefect runs Dendro jobs on Prefect.\n"


def follow_job(admin: CentralAdmin, job_id: str, timeout: float, process: subprocess.Popen) -> dict:
    """Print each status the job passes through, with the time since submission, until it ends."""
    started, seen = time.monotonic(), None
    while True:
        exit_code = process.poll()
        job = admin.job(job_id)
        if job["status"] != seen:
            seen = job["status"]
            typer.echo(f"  {time.monotonic() - started:6.2f} s  {seen}")
        if seen in ("completed", "failed"):
            return job
        if exit_code is not None:
            raise typer.Exit(f"the app exited with code {exit_code} but left job {job_id} {seen}")
        if time.monotonic() - started > timeout:
            raise typer.Exit(f"job {job_id} still {seen} after {timeout:.0f} s")
        time.sleep(0.1)


def launch_with_sdk(client: CentralClient, job_id: str, workdir: Path, sdk_venv: Path) -> subprocess.Popen:
    """Run the job as the `none` container method does: set `starting`, start the app process."""
    job = next(j for j in client.get_unfinished_jobs() if j["jobId"] == job_id)
    client.set_job_status(job_id, job["jobPrivateKey"], "starting")
    executable = str(APP_DIR / "main.py")
    env = dict(
        os.environ, PATH=f"{sdk_venv.resolve() / 'bin'}{os.pathsep}{os.environ['PATH']}", JOB_ID=job_id,
        JOB_PRIVATE_KEY=job["jobPrivateKey"], APP_EXECUTABLE=executable, DENDRO_URL=client.central_url,
        JOB_TIMEOUT_SEC=str(int(job["requiredResources"]["timeSec"])), PYTHONUNBUFFERED="1",
    )
    workdir.mkdir(parents=True)
    return subprocess.Popen([executable], env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_demo(workdir: Path, sdk_venv: Path, timeout: float) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    with running_central(workdir / "central") as admin:
        typer.echo(f"Central stand-in: {admin.url}")
        resource_id, private_key = generate_keypair()
        config = ComputeResourceConfig(compute_resource_id=resource_id, compute_resource_private_key=private_key,
                                       central_url=admin.url, container_method="none")
        config.write(workdir / ".dendro_compute_resource.json")
        admin.approve(resource_id, make_resource_code(private_key), "demo")
        typer.echo(f"Compute resource {resource_id} registered")
        admin.set_apps(resource_id, [{"name": "letter_count", "specUri": (APP_DIR / "spec.json").as_uri()}])
        project_id = admin.create_project("demo")
        admin.upload_file(project_id, "text.txt", DEMO_TEXT.encode())
        spec = json.loads((APP_DIR / "spec.json").read_text())
        job_id = admin.create_job({
            "computeResourceId": resource_id, "projectId": project_id, "processorName": "letter_count",
            "inputFiles": [{"name": "input", "fileName": "text.txt"}],
            "outputFiles": [{"name": "output", "fileName": "count.json"}],
            "inputParameters": [{"name": "letter", "value": "e"}],
            "processorSpec": spec["processors"][0],
            "requiredResources": {"numCpus": 1, "numGpus": 0, "memoryGb": 1, "timeSec": 120},
            "runMethod": "local",
        })
        typer.echo(f"Submitted job {job_id}; its statuses at the central:")
        client = CentralClient(admin.url, resource_id, private_key)
        process = launch_with_sdk(client, job_id, workdir / "jobs" / job_id, sdk_venv)
        try:
            job = follow_job(admin, job_id, timeout, process)
        finally:
            process.wait(timeout=30)
        if job["status"] != "completed":
            raise typer.Exit(f"job failed: {job.get('error')}")
        typer.echo(f"Output count.json: {admin.output(job_id, 'output').decode()}")
