"""`dendro-prefect demo`: one real Dendro job from submitted to completed through Prefect.

On this machine alone: a Prefect server (SQLite), the central stand-in, a registered compute resource,
the work pools and deployments of prefect.yaml, a process worker running the subscription flow and a
`dendro-local` worker; then a job of an app written with the real dendro SDK (letter_count, or with
`--app mountainsort5` a spike sort of a synthetic recording) is submitted at the central and followed
until it ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import typer

from . import spike_sorting
from .apps import build_app_image, local_spec_uri
from .central.admin_client import CentralAdmin
from .central.process import running_central
from .config import ComputeResourceConfig
from .embedded import WORK_POOLS, deploy_all, prefect_server, prefect_worker
from .protocol.signing import generate_keypair, make_resource_code

REPO = Path(__file__).resolve().parent.parent
DEMO_TEXT = "Dendro runs neurophysiology analyses; dendro-prefect runs Dendro jobs on Prefect.\n"
SUBSCRIPTION_DEPLOYMENT = "dendro-subscription/subscription"


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


class LetterCountDemo:
    """letter_count (apps/letter_count): counts a letter in a text file, in seconds."""

    name = "letter_count"
    app_dir = REPO / "apps" / "letter_count"
    image = "dendro-letter-count:local"

    def prepare(self, workdir: Path) -> None:
        pass

    def submit(self, admin: CentralAdmin, resource_id: str) -> str:
        project_id = admin.create_project("demo")
        admin.upload_file(project_id, "text.txt", DEMO_TEXT.encode())
        spec = json.loads((self.app_dir / "spec.json").read_text())
        return admin.create_job({
            "computeResourceId": resource_id, "projectId": project_id, "processorName": "letter_count",
            "inputFiles": [{"name": "input", "fileName": "text.txt"}],
            "outputFiles": [{"name": "output", "fileName": "count.json"}],
            "inputParameters": [{"name": "letter", "value": "e"}],
            "processorSpec": spec["processors"][0],
            "requiredResources": {"numCpus": 1, "numGpus": 0, "memoryGb": 1, "timeSec": 120},
            "runMethod": "local",
        })

    def show_output(self, admin: CentralAdmin, job_id: str, workdir: Path) -> None:
        typer.echo(f"Output count.json: {admin.output(job_id, 'output').decode()}")


class SpikeSortingDemo:
    """mountainsort5 (apps/mountainsort5): sorts a synthetic 30 s, 16-channel recording of 6 units, then
    compares the sorted units with the recording's ground truth."""

    name = "mountainsort5"
    app_dir = spike_sorting.APP_DIR
    image = spike_sorting.IMAGE

    def prepare(self, workdir: Path) -> None:
        typer.echo("Installing the app's virtual environment (apps/mountainsort5/install.sh; a minute the first "
                   "time) and making a synthetic recording with known ground truth …")
        self.recording = spike_sorting.make_recording(workdir / "recording")

    def submit(self, admin: CentralAdmin, resource_id: str) -> str:
        project_id = admin.create_project("demo")
        admin.upload_file(project_id, "recording.nwb", self.recording.nwb.read_bytes())
        return admin.create_job(spike_sorting.job_request(resource_id, project_id, "recording.nwb"))

    def show_output(self, admin: CentralAdmin, job_id: str, workdir: Path) -> None:
        sorted_nwb = workdir / "sorting.nwb"
        sorted_nwb.write_bytes(admin.output(job_id, "output"))
        summary = spike_sorting.compare_with_ground_truth(sorted_nwb, self.recording)
        typer.echo(f"Output sorting.nwb ({sorted_nwb}): {summary['units_found']} units sorted; accuracy of each "
                   f"of the {summary['gt_units']} true units: "
                   + ", ".join(f"{unit}: {accuracy:.2f}" for unit, accuracy in summary["accuracies"].items()))


DEMO_APPS = {demo.name: demo for demo in (LetterCountDemo(), SpikeSortingDemo())}


def app_spec_uri(demo, workdir: Path, container_method: str) -> str:
    """The app as it is (a plain process), or built into a local image for docker."""
    if container_method == "none":
        return local_spec_uri(demo.app_dir, workdir)
    typer.echo(f"Building the app image {demo.image} (the first build takes a minute or two) …")
    build_app_image(demo.app_dir, demo.image)
    return local_spec_uri(demo.app_dir, workdir, demo.image)


def register_resource(admin: CentralAdmin, workdir: Path, container_method: str, demo) -> ComputeResourceConfig:
    resource_id, private_key = generate_keypair()
    config = ComputeResourceConfig(compute_resource_id=resource_id, compute_resource_private_key=private_key,
                                   central_url=admin.url, container_method=container_method,
                                   pubsub_origin=admin.pubsub_origin)
    config.write(workdir / ".dendro_compute_resource.json")
    admin.approve(resource_id, make_resource_code(private_key), "demo")
    admin.set_apps(resource_id, [{"name": demo.name, "specUri": app_spec_uri(demo, workdir, container_method)}])
    return config


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


def run_demo(workdir: Path, sdk_venv: Path, timeout: float, keep_running: bool, container_method: str,
             app: str = "letter_count") -> None:
    demo = DEMO_APPS[app]
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
        demo.prepare(workdir)
        config = register_resource(admin, workdir, container_method, demo)
        typer.echo(f"Prefect UI: {api_url.removesuffix('/api')}   central: {admin.url}")
        typer.echo(f"Compute resource {config.compute_resource_id} registered with app {demo.name} "
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
        job_id = demo.submit(admin, config.compute_resource_id)
        typer.echo(f"Submitted job {job_id}; its statuses at the central:")
        job = follow_job(admin, job_id, timeout)
        typer.echo(f"Flow run {final_flow_run(api_url, job_id, 30)}")
        if job["status"] != "completed":
            raise typer.Exit(f"job failed: {job.get('error')}")
        demo.show_output(admin, job_id, workdir)
        if keep_running:
            typer.echo("Keeping everything running; press Ctrl-C to stop.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
