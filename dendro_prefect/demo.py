"""`dendro-prefect demo`: one real Dendro job from submitted to completed through Prefect.

On this machine alone: a Prefect server (PostgreSQL, or SQLite), the central stand-in, a registered compute
resource (Dendro 0.2) or compute client of a service (`--dendro 0.6`),
the work pools and deployments of prefect.yaml, a process worker running the subscription flow and a
`dendro-local` worker; then a job of an app written with the real dendro SDK (letter_count, or with
`--app mountainsort5` a spike sort of a synthetic recording) is submitted at the central and followed
until it ends.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import typer

from . import spike_sorting
from .apps import build_app_image, local_spec_uri
from .embedded import PROJECT_DIR, WORK_POOLS, running_prefect
from .embedded_controller import register_compute_client, running_controller
from .file_server import serving_files
from .stand_in.admin_client import StandInAdmin
from .stand_in.process import running_stand_in

REPO = PROJECT_DIR
DEMO_TEXT = "Dendro runs neurophysiology analyses; dendro-prefect runs Dendro jobs on Prefect.\n"


def follow_job(read_job, job_id: str, timeout: float) -> dict:
    """Print each status the job passes through (`read_job(job_id)`, the central's document), with the time since
    submission, until it ends."""
    started, seen = time.monotonic(), None
    while True:
        job = read_job(job_id)
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

    def submit(self, admin: StandInAdmin, resource_id: str) -> str:
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

    def show_output(self, admin: StandInAdmin, job_id: str, workdir: Path) -> None:
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

    def submit(self, admin: StandInAdmin, resource_id: str) -> str:
        project_id = admin.create_project("demo")
        admin.upload_file(project_id, "recording.nwb", self.recording.nwb.read_bytes())
        return admin.create_job(spike_sorting.job_request(resource_id, project_id, "recording.nwb"))

    def show_output(self, admin: StandInAdmin, job_id: str, workdir: Path) -> None:
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
             app: str = "letter_count", database: str = "postgres", dendro: str = "0.2") -> None:
    workdir = workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    if container_method == "auto":
        container_method = "docker" if docker_available() and dendro == "0.2" else "none"
    typer.echo(f"Starting a Prefect server ({'PostgreSQL' if database == 'postgres' else 'SQLite'}) with the work "
               f"pools and deployments of prefect.yaml, and the Dendro {dendro} central stand-in …")
    with running_prefect(workdir / "prefect", database=database) as prefect, \
            running_stand_in(workdir / "central") as admin:
        typer.echo(f"Prefect UI: {prefect.api_url.removesuffix('/api')}   central: {admin.url}")
        typer.echo(f"Work pools {', '.join(WORK_POOLS)} created; deployments of prefect.yaml applied")
        if dendro == "0.6":
            return run_service_demo(prefect, admin, workdir, sdk_venv, timeout, keep_running)
        demo = DEMO_APPS[app]
        demo.prepare(workdir)
        apps = [{"name": demo.name, "specUri": app_spec_uri(demo, workdir, container_method)}]
        with running_controller(prefect, workdir, apps, central=admin, container_method=container_method,
                                resource_name="demo", sdk_bin=sdk_venv.resolve() / "bin", poll_interval_sec=10.0,
                                startup_timeout=timeout) as controller:
            typer.echo(f"Compute resource {controller.resource_id} registered with app {demo.name} (container "
                       f"method {container_method}); its subscription flow and the local worker running")
            follow_demo_job(demo, prefect.api_url, admin, controller.resource_id, workdir, timeout, keep_running)


def follow_demo_job(demo, api_url: str, admin: StandInAdmin, resource_id: str, workdir: Path, timeout: float,
                    keep_running: bool) -> None:
    job_id = demo.submit(admin, resource_id)
    typer.echo(f"Submitted job {job_id}; its statuses at the central:")
    job = follow_job(admin.job, job_id, timeout)
    typer.echo(f"Flow run {final_flow_run(api_url, job_id, 30)}")
    if job["status"] != "completed":
        raise typer.Exit(f"job failed: {job.get('error')}")
    demo.show_output(admin, job_id, workdir)
    if keep_running:
        keep_running_until_ctrl_c()


def keep_running_until_ctrl_c() -> None:
    typer.echo("Keeping everything running; press Ctrl-C to stop.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


HELLO_WORLD = REPO / "apps" / "hello_world"
DEMO_SERVICE = "demo_service"


def run_service_demo(prefect, admin: StandInAdmin, workdir: Path, sdk_venv: Path, timeout: float,
                     keep_running: bool) -> None:
    """Dendro 0.6: a service with the hello_world app (magland/dendro's, written with dendro 0.6.22), a compute
    client registered through the service's registration page, and a count_characters job of a text file."""
    spec = json.loads((HELLO_WORLD / "spec.json").read_text())
    for processor in spec["processors"]:  # a plain process: its executable where this checkout has it
        processor["executable"] = str(HELLO_WORLD / processor["executable"])
    admin.create_service(DEMO_SERVICE)
    admin.add_service_app(DEMO_SERVICE, spec)
    config = register_compute_client(admin, workdir, DEMO_SERVICE, "demo")
    (workdir / "inputs").mkdir()
    (workdir / "inputs" / "text.txt").write_text(DEMO_TEXT)
    with serving_files(workdir / "inputs") as inputs_url, \
            running_controller(prefect, workdir, [], central=admin, registered=config, sdk_bin=sdk_venv.resolve() / "bin",
                               poll_interval_sec=10.0, startup_timeout=timeout):
        typer.echo(f"Compute client {config.compute_client_id} of service {DEMO_SERVICE} registered (app hello_world, "
                   "a plain process); its subscription flow and the local worker running")
        job_id = admin.create_service_job(DEMO_SERVICE, {
            "appName": "hello_world", "processorName": "count_characters",
            "inputFiles": [{"name": "input", "fileBaseName": "text.txt", "url": f"{inputs_url}/text.txt"}],
            "outputFiles": [{"name": "output", "fileBaseName": "output.json"}], "parameters": [],
        }, required_resources={"numCpus": 1, "numGpus": 0, "memoryGb": 1, "timeSec": 120},
            target_compute_client_ids=[config.compute_client_id])
        typer.echo(f"Submitted job {job_id}; its statuses at the service:")
        job = follow_job(admin.service_job, job_id, timeout)
        typer.echo(f"Flow run {final_flow_run(prefect.api_url, job_id, 30)}")
        if job["status"] != "completed":
            raise typer.Exit(f"job failed: {job.get('error')}")
        [output] = job["outputFileResults"]
        typer.echo(f"Output output.json: {admin.download(output['url']).decode()}")
        if keep_running:
            keep_running_until_ctrl_c()
