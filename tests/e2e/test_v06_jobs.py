"""Dendro 0.6 jobs through the same Prefect machinery as 0.2's: a compute client registered at the stand-in's
service (its registration page), its subscription flow and a `local` pool worker running apps as plain processes
under the real dendro 0.6.22 SDK (.venv-sdk06). The service's rules are the stand-in's (stand_in/v06)."""

from __future__ import annotations

import itertools
import json
import os
import signal
from pathlib import Path

import pytest

from dendro_prefect.embedded import prefect_worker
from dendro_prefect.embedded_controller import register_compute_client
from dendro_prefect.file_server import serving_files
from dendro_prefect.protocol.v06.client import ServiceClient
from dendro_prefect.protocol.v06.registration import read_registration_code
from dendro_prefect.stand_in.process import running_stand_in
from tests.conftest import REPO
from tests.stack import final_flow_run, flow_runs_of_job, running_controller, wait_for, wait_for_log, worker_name

SDK06_VENV = Path(os.environ.get("DENDRO_SDK06_VENV", REPO / ".venv-sdk06"))
APP_DIR = REPO / "apps" / "hello_world"
SERVICE = "hello_world_service"
RESOURCES = {"numCpus": 1, "numGpus": 0, "memoryGb": 1, "timeSec": 60}
INPUTS = itertools.count()  # each job's own input file (the service memoizes jobs of the same definition)


@pytest.fixture(scope="module")
def sdk06_bin() -> Path:
    if not (SDK06_VENV / "bin" / "dendro").exists():
        pytest.fail(f"no dendro 0.6.22 SDK in {SDK06_VENV}: run `bash scripts/test.sh`, which creates it")
    return SDK06_VENV / "bin"


def app_spec() -> dict:
    """The hello_world app with its executable where this checkout has it: the workers run it as a plain process."""
    spec = json.loads((APP_DIR / "spec.json").read_text())
    for processor in spec["processors"]:
        processor["executable"] = str(APP_DIR / processor["executable"])
    return spec


@pytest.fixture(scope="module")
def client(prefect_stack, tmp_path_factory, sdk06_bin):
    """A compute client of the stand-in's service, with two compute slots, its controller and `local` worker
    running; the input files' server."""
    workdir = tmp_path_factory.mktemp("v06")
    (workdir / "inputs").mkdir()
    with running_stand_in(workdir / "central") as admin, serving_files(workdir / "inputs") as inputs_url:
        admin.create_service(SERVICE)
        admin.add_service_app(SERVICE, app_spec())
        config = register_compute_client(admin, workdir, SERVICE, "lab-prefect")
        slot = {**RESOURCES, "numCpus": 4, "memoryGb": 8, "timeSec": 3600}
        admin.set_compute_slots(config.compute_client_id, [{**slot, "multiplicity": 2}])
        with running_controller(prefect_stack, workdir, sdk06_bin, central=admin, registered=config) as running:
            yield running, workdir / "inputs", inputs_url


def count_characters(running, inputs: Path, inputs_url: str, text: str | None, **options) -> str:
    """A count_characters job targeted at the compute client; `text` None: its input is missing (the job fails)."""
    name = f"input-{next(INPUTS)}.txt"
    if text is not None:
        (inputs / name).write_text(text)
    definition = {"appName": "hello_world", "processorName": "count_characters",
                  "inputFiles": [{"name": "input", "fileBaseName": "input.txt", "url": f"{inputs_url}/{name}"}],
                  "outputFiles": [{"name": "output", "fileBaseName": "output.json"}], "parameters": []}
    options.setdefault("target_compute_client_ids", [running.config.compute_client_id])
    return running.admin.create_service_job(SERVICE, definition, required_resources=RESOURCES, **options)


def finished(admin, job_id: str, timeout: float = 90.0) -> dict:
    return wait_for(lambda: (j := admin.service_job(job_id))["status"] in ("completed", "failed") and j,
                    f"job {job_id} to finish", timeout)


def test_a_job_runs_to_completed_with_its_output(client):
    running, inputs, inputs_url = client
    job_id = count_characters(running, inputs, inputs_url, "hello dendro 0.6")
    job = finished(running.admin, job_id)
    assert job["status"] == "completed", job.get("error")
    assert job["computeClientId"] == running.config.compute_client_id
    [output] = job["outputFileResults"]
    assert json.loads(running.admin.download(output["url"])) == {"num_characters": 16}
    flow_run = final_flow_run(job_id)
    assert flow_run.state.is_completed() and flow_run.parameters == {"job_id": job_id}
    assert {f"job:{job_id}", f"resource:{running.config.compute_client_id}", f"service:{SERVICE}",
            "processor:count_characters", "run-method:local"} <= set(flow_run.tags)
    wait_for_log(flow_run.id, f"Job {job_id} launched as process:", "(Job private key: [redacted])")


def test_a_job_whose_dependency_failed_is_not_run(client):
    running, inputs, inputs_url = client
    failing = count_characters(running, inputs, inputs_url, None)
    dependant = count_characters(running, inputs, inputs_url, "never counted", job_dependencies=(failing,))
    assert finished(running.admin, failing)["status"] == "failed"
    assert final_flow_run(failing).state.is_failed()
    # The service never offers a job whose dependency failed: it stays pending, and no flow run is made of it,
    # however many rounds pass (a later job, created after the failure, has its run once it is done).
    later = count_characters(running, inputs, inputs_url, "after")
    assert finished(running.admin, later)["status"] == "completed"
    assert running.admin.service_job(dependant)["status"] == "pending" and flow_runs_of_job(dependant) == []


def test_a_job_another_compute_client_claims_first_is_not_run_here_and_not_failed(client, prefect_stack):
    """Its flow run waits (the pool's worker is stopped) while another compute client of the service claims the
    job; the restarted worker's claim is refused: the run ends Cancelled with why, the job stays theirs. The
    module's own worker does not come back: this test is the module's last."""
    running, inputs, inputs_url = client
    other = read_registration_code(running.admin.register_compute_client(SERVICE, "another-lab"))
    other_client = ServiceClient(running.admin.url, other.computeClientId, other.computeClientPrivateKey)
    worker = running.processes[0]  # gone at once (a SIGINT'd worker took over 60 s to stop on the loaded suite)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    job_id = count_characters(running, inputs, inputs_url, "theirs", target_compute_client_ids=["*"])
    wait_for(lambda: flow_runs_of_job(job_id), "the job's flow run, waiting for a worker")
    other_client.set_job_status(job_id, running.admin.service_job(job_id)["jobPrivateKey"], "starting")
    with prefect_worker(prefect_stack.home, prefect_stack.api_url, running.pool, running.worker_type, running.workdir,
                        f"restarted-{running.pool}.log", running.worker_env, name=worker_name(running.pool)):
        flow_run = final_flow_run(job_id)
    assert flow_run.state.is_cancelled()
    assert flow_run.state.message.startswith(f"Not run here: job {job_id} was claimed by compute client another-lab")
    job = running.admin.service_job(job_id)
    assert (job["status"], job["computeClientId"], job.get("error")) == ("starting", other.computeClientId, None)
