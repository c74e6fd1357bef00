"""`dendro-prefect demo`: one real Dendro job from submitted to completed through Prefect.

On this machine alone: a Prefect server (SQLite), the central stand-in, a registered compute resource,
the work pools and deployments of prefect.yaml, a process worker running the subscription flow and a
`dendro-local` worker; then a letter_count job (an app written
with the real dendro SDK) is submitted at the central and followed until it ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import typer

from .central.admin_client import CentralAdmin
from .central.process import running_central
from .config import ComputeResourceConfig
from .embedded import WORK_POOLS, deploy_all, prefect_server, prefect_worker
from .protocol.signing import generate_keypair, make_resource_code

REPO = Path(__file__).resolve().parent.parent
APP_DIR = REPO / "apps" / "letter_count"
DEMO_TEXT = "Dendro runs neurophysiology analyses; dendro-prefect runs Dendro jobs on Prefect.\n"
SUBSCRIPTION_DEPLOYMENT = "dendro-subscription/subscription"
DEMO_IMAGE = "dendro-letter-count:local"


def follow_job(admin: CentralAdmin, job_id: str, timeout: float) -> dict:
    """Print each status the job passes through, with the time since submission, until it ends."""
    started, seen = time.monotonic(), None
    while True:
        job = admin.job(job_id)
        if job["status"] != seen:
            seen = job["status"]
            typer.echo(f"  {time.monotonic() - started:6.2f} s  {seen}")
        if seen in ("completed", "failed"):
            return job
        if time.monotonic() - started > timeout:
            raise typer.Exit(f"job {job_id} still {seen} after {timeout:.0f} s")
        time.sleep(0.05)


def docker_available() -> bool:
    import docker

    try:
        docker.from_env().ping()
    except docker.errors.DockerException:
        return False
    return True


def app_spec_uri(workdir: Path, container_method: str) -> str:
    """The app as it is (a plain process), or built into a local image for docker."""
    if container_method == "none":
        return (APP_DIR / "spec.json").as_uri()
    typer.echo(f"Building the app image {DEMO_IMAGE} (the first build takes a minute or two) …")
    subprocess.run(["bash", str(REPO / "scripts" / "build-app-image.sh"), str(APP_DIR), DEMO_IMAGE], check=True,
                   stdout=subprocess.DEVNULL)
    spec = json.loads((APP_DIR / "spec.json").read_text())
    spec.update(appImage=DEMO_IMAGE, appExecutable="/app/main.py", executable="/app/main.py")
    path = workdir / "letter_count_image_spec.json"
    path.write_text(json.dumps(spec, indent=2))
    return path.as_uri()


def register_resource(admin: CentralAdmin, workdir: Path, container_method: str) -> ComputeResourceConfig:
    resource_id, private_key = generate_keypair()
    config = ComputeResourceConfig(compute_resource_id=resource_id, compute_resource_private_key=private_key,
                                   central_url=admin.url, container_method=container_method)
    config.write(workdir / ".dendro_compute_resource.json")
    admin.approve(resource_id, make_resource_code(private_key), "demo")
    admin.set_apps(resource_id, [{"name": "letter_count", "specUri": app_spec_uri(workdir, container_method)}])
    return config


def submit_letter_count(admin: CentralAdmin, resource_id: str) -> str:
    project_id = admin.create_project("demo")
    admin.upload_file(project_id, "text.txt", DEMO_TEXT.encode())
    spec = json.loads((APP_DIR / "spec.json").read_text())
    return admin.create_job({
        "computeResourceId": resource_id, "projectId": project_id, "processorName": "letter_count",
        "inputFiles": [{"name": "input", "fileName": "text.txt"}],
        "outputFiles": [{"name": "output", "fileName": "count.json"}],
        "inputParameters": [{"name": "letter", "value": "e"}],
        "processorSpec": spec["processors"][0],
        "requiredResources": {"numCpus": 1, "numGpus": 0, "memoryGb": 1, "timeSec": 120},
        "runMethod": "local",
    })


def start_subscription(api_url: str, config_file: Path, poll_interval_sec: float) -> str:
    os.environ["PREFECT_API_URL"] = api_url
    from prefect.deployments import arun_deployment

    flow_run = asyncio.run(arun_deployment(
        SUBSCRIPTION_DEPLOYMENT, parameters={"config_file": str(config_file), "poll_interval_sec": poll_interval_sec},
        timeout=0, as_subflow=False,
    ))
    return str(flow_run.id)


def wait_for_controller(admin: CentralAdmin, resource_id: str, timeout: float) -> None:
    """The subscription flow reports the apps' spec once it has subscribed: wait for that."""
    deadline = time.monotonic() + timeout
    while admin.resource(resource_id)["spec"] is None:
        if time.monotonic() > deadline:
            raise typer.Exit("the subscription flow did not start; see the controller worker's log")
        time.sleep(0.1)


def final_flow_run(api_url: str, job_id: str, timeout: float) -> str:
    """The job's flow run once it is in a final state, as a line with its URL."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    async def read() -> str:
        deadline = time.monotonic() + timeout
        async with get_client() as client:
            while True:
                runs = await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"job:{job_id}"])))
                if runs and runs[0].state and runs[0].state.is_final():
                    run = runs[0]
                    return f"{run.name}: {run.state.name} ({api_url.removesuffix('/api')}/runs/flow-run/{run.id})"
                if time.monotonic() > deadline:
                    return f"no final flow run for job {job_id} after {timeout:.0f} s"
                await asyncio.sleep(0.2)

    return asyncio.run(read())


def run_demo(workdir: Path, sdk_venv: Path, timeout: float, keep_running: bool, container_method: str) -> None:
    workdir = workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    home = workdir / "prefect"
    if container_method == "auto":
        container_method = "docker" if docker_available() else "none"
    with ExitStack() as stack:
        typer.echo("Starting a Prefect server (SQLite) and the Dendro central stand-in …")
        api_url = stack.enter_context(prefect_server(home))
        admin = stack.enter_context(running_central(workdir / "central"))
        config = register_resource(admin, workdir, container_method)
        typer.echo(f"Prefect UI: {api_url.removesuffix('/api')}   central: {admin.url}")
        typer.echo(f"Compute resource {config.compute_resource_id} registered with app letter_count "
                   f"(container method {container_method})")
        deploy_all(home, api_url, REPO)
        typer.echo(f"Work pools {', '.join(WORK_POOLS)} created; deployments of prefect.yaml applied")
        stack.enter_context(prefect_worker(home, api_url, "dendro-controller", "process", REPO, "controller-worker.log"))
        sdk_path = f"{sdk_venv.resolve() / 'bin'}{os.pathsep}{os.environ['PATH']}"
        stack.enter_context(prefect_worker(home, api_url, "local", "dendro-local", workdir, "local-worker.log",
                                           {"PATH": sdk_path}))
        start_subscription(api_url, workdir / ".dendro_compute_resource.json", 10.0)
        wait_for_controller(admin, config.compute_resource_id, timeout)
        typer.echo("Subscription flow running; workers started")
        job_id = submit_letter_count(admin, config.compute_resource_id)
        typer.echo(f"Submitted job {job_id}; its statuses at the central:")
        job = follow_job(admin, job_id, timeout)
        typer.echo(f"Flow run {final_flow_run(api_url, job_id, 30)}")
        if job["status"] != "completed":
            raise typer.Exit(f"job failed: {job.get('error')}")
        typer.echo(f"Output count.json: {admin.output(job_id, 'output').decode()}")
        if keep_running:
            typer.echo("Keeping everything running; press Ctrl-C to stop.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
