"""End to end with real parts, brought up by dendro_prefect's embedded stack (embedded, embedded_controller): a
Prefect server (SQLite) with prefect.yaml's pools and deployments, the central stand-in, a process worker
running the subscription flow, `dendro-local` workers, and apps written with the real dendro SDK."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    FlowRunFilter,
    FlowRunFilterTags,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelling

from dendro_prefect import embedded_controller
from dendro_prefect.apps import local_spec_uri
from dendro_prefect.embedded import Deployment, Prefect, controller_worker, deploy, prefect_worker, running_prefect
from dendro_prefect.embedded_controller import RunningController  # noqa: F401 (the test modules import it from here)
from dendro_prefect.stand_in.admin_client import StandInAdmin
from tests.conftest import LETTER_COUNT_APP, REPO, wait_for  # noqa: F401 (the test modules import it from here)
from tests.secrets_scan import assert_no_secrets_leaked, known_secrets, record_central_jobs, record_secret

IMAGE = "dendro-letter-count:local"
HELLO_WORLD_IMAGE = "dendro-hello-world:local"


# The tests' Prefect: its home, API URL and the process worker of pool dendro-controller that runs the
# controllers' subscription flows (None: each controller starts its own).
PrefectStack = Prefect


@pytest.fixture(scope="session")
def prefect_stack(tmp_path_factory) -> PrefectStack:
    with prefect_for_tests(tmp_path_factory, "prefect") as prefect:
        yield prefect


@contextmanager
def prefect_for_tests(tmp_path_factory, name: str, api_processes: int = 1, scan_job_files: bool = True):
    """The embedded Prefect server (`api_processes` > 1: Prefect's scale-out server) with the process worker
    that runs the controllers' subscription flows. `scan_job_files=False` for a stack that ends before the
    session's: the session's check reads every job directory of this pytest process's tree once, at its end."""
    home = tmp_path_factory.mktemp(name)
    with running_prefect(home, controller=False, api_processes=api_processes) as prefect:
        with controller_worker(prefect):
            yield prefect
        close_prefect_clients()
        # Before the server stops: no key or credential of the tests in Prefect, the job directories or the
        # workers' logs (a finding fails the session).
        assert_no_secrets_leaked(home, tmp_path_factory.getbasetemp(), job_files=scan_job_files)


def run(coroutine):
    return asyncio.run(coroutine)


_PREFECT_CLIENTS: dict[str, SyncPrefectClient] = {}


def prefect_api() -> SyncPrefectClient:
    """A synchronous Prefect client of the API at PREFECT_API_URL, kept for the session: the tests poll
    Prefect often, and a client made per call costs 80 ms of CPU here and its server 60 ms (its start-up
    checks), where a call of a client kept costs 8 ms and 22 ms."""
    api_url = PREFECT_API_URL.value()
    if api_url not in _PREFECT_CLIENTS:
        client = get_client(sync_client=True)
        client.__enter__()
        _PREFECT_CLIENTS[api_url] = client
    return _PREFECT_CLIENTS[api_url]


def close_prefect_clients() -> None:
    while _PREFECT_CLIENTS:
        _PREFECT_CLIENTS.popitem()[1].__exit__(None, None, None)


def intake(resource_controller) -> int:
    """One intake round of a controller (dendro_prefect.controller.rounds.Controller) made by a test itself."""
    async def one() -> int:
        async with get_client() as client:
            return await resource_controller.intake(client)

    return run(one())


def flow_runs_of_job(job_id: str) -> list[FlowRun]:
    return prefect_api().read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"job:{job_id}"])))


def final_flow_run(job_id: str, timeout: float = 60.0) -> FlowRun:
    def final():
        runs = flow_runs_of_job(job_id)
        return runs[0] if runs and runs[0].state and runs[0].state.is_final() else None

    return wait_for(final, f"a final flow run of job {job_id}", timeout)


def flow_run_log(flow_run_id) -> str:
    logs = prefect_api().read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join(log.message for log in logs)


def job_cards(flow_run_id) -> list[str]:
    """The markdown artifacts of a flow run (the worker's job card, workers/job_card.py)."""
    artifacts = prefect_api().read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), type=ArtifactFilterType(any_=["markdown"])))
    return [artifact.data for artifact in artifacts]


def wait_for_log(flow_run_id, *texts: str, timeout: float = 30.0) -> str:
    """The flow run's log once it holds every text: logs reach the server in batches."""
    def complete_log() -> str | None:
        log = flow_run_log(flow_run_id)
        return log if all(text in log for text in texts) else None

    return wait_for(complete_log, f"log lines {texts} of flow run {flow_run_id}", timeout, interval=0.5)


def set_state(flow_run_id, state) -> None:
    """Force a flow run into `state`, as an admin (or the UI) does."""
    prefect_api().set_flow_run_state(flow_run_id, state, force=True)


def cancel_flow_run(flow_run_id) -> None:
    set_state(flow_run_id, Cancelling())


def finished_job(admin: StandInAdmin, job_id: str, timeout: float = 90.0) -> dict:
    return wait_for(lambda: (j := admin.job(job_id))["status"] in ("completed", "failed") and j,
                    f"job {job_id} to finish", timeout)


def letter_count_spec_uri(workdir: Path, image: str | None = None, executable: str = "/app/main.py") -> str:
    """The letter_count spec as a file: as is for a plain process, or naming a docker image (and the
    app's executable in it)."""
    return local_spec_uri(LETTER_COUNT_APP, workdir, image, executable)


def create_job_pool(pool: str, worker_type: str = "dendro-local", job_variables: dict | None = None,
                    flow: str = "dendro-job", deployment: str | None = None) -> str:
    """A work pool with a `<flow>/<deployment>` deployment (named as the pool by default), applied with
    `prefect deploy` on the Prefect server of PREFECT_API_URL; returns the deployment's name. Each controller
    of the tests has its own, so that no worker of another takes its jobs."""
    [name] = deploy(Deployment(pool, worker_type, job_variables, flow, deployment))
    return name


@contextmanager
def running_controller(prefect: PrefectStack, workdir: Path, sdk_bin: Path, container_method: str = "none",
                       apps: list[dict] | None = None, poll_interval_sec: float = 2.0, mock_pubsub: bool = False,
                       pool: str | None = None, worker_type: str = "dendro-local", run_method: str = "local",
                       job_variables: dict | None = None, worker_env: dict | None = None,
                       deployments: dict | None = None, settle_sec: float = 30.0, central=None, registered=None):
    """A controller whose jobs of `run_method` go to `pool` (by default a pool of its own; `local` is
    prefect.yaml's); `deployments` routes other runMethods elsewhere. Its central is a stand-in of its own,
    or `central`, an admin client of a central already running (a `StandInAdmin`, or the real central's
    `tests.real_central.harness.RealCentral`). Its apps: letter_count as a plain process by default. `registered`:
    the configuration of a resource registered at `central` already (written in `workdir`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    pool = pool or f"{run_method}-{workdir.name}"
    with embedded_controller.running_controller(
        prefect, workdir, apps or [{"name": "letter_count", "specUri": letter_count_spec_uri(workdir)}],
        pool=pool if pool == "local" else Deployment(pool, worker_type, job_variables), worker_type=worker_type,
        run_method=run_method, deployments=deployments, central=central, mock_pubsub=mock_pubsub,
        container_method=container_method, sdk_bin=sdk_bin, worker_env=worker_env, worker_name=worker_name(pool),
        poll_interval_sec=poll_interval_sec, settle_sec=settle_sec, registered=registered,
    ) as controller:
        record_secret(controller.config.private_key, "compute-resource-key")
        yield controller


def worker_name(pool: str) -> str:
    """The name of a test pool's worker: a worker restarted under it takes up its predecessor's jobs."""
    return f"{pool}-worker"


@pytest.fixture(scope="module")
def controller(prefect_stack, tmp_path_factory, sdk_bin) -> RunningController:
    """A controller on prefect.yaml's `local` pool; its runMethod `kubernetes` names a deployment that
    does not exist, for the tests of jobs that cannot run."""
    with running_controller(prefect_stack, tmp_path_factory.mktemp("controller"), sdk_bin, pool="local",
                            deployments={"kubernetes": "dendro-job/no-such-deployment"}) as running:
        yield running


def docker_engine() -> docker.DockerClient:
    """A real docker engine (scripts/test.sh starts one), or the test is skipped."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as error:
        pytest.skip(f"no docker engine on this machine ({error}); scripts/test.sh starts one")
    return client


def built_app_image(app: str, image: str, **env: str) -> str:
    """The image of `apps/<app>`, built here (scripts/build-app-image.sh: from a debootstrapped base and the dendro
    SDK's wheels, since no registry is reachable); at once when scripts/test.sh has built it already."""
    subprocess.run(["bash", str(REPO / "scripts" / "build-app-image.sh"), str(REPO / "apps" / app), image],
                   check=True, capture_output=True, timeout=900, env={**os.environ, **env})
    return image


@pytest.fixture(scope="session")
def docker_client():
    """A real docker engine with an image of the letter_count app (IMAGE)."""
    client = docker_engine()
    built_app_image("letter_count", IMAGE)
    return client


@pytest.fixture(scope="session")
def hello_world_image() -> str:
    """The image of the Dendro 0.6 app apps/hello_world, with the dendro 0.6.22 SDK."""
    docker_engine()
    return built_app_image("hello_world", HELLO_WORLD_IMAGE, DENDRO_PREFECT_DENDRO_REQUIREMENT="dendro==0.6.22")


# How long an app of restart_worker_and_finish runs (its `delay_sec`): it must outlive the kill and the new worker's
# start, which took up to ~25 s on the loaded suite (a job of 20 s had ended before the new worker looked).
APP_OUTLIVES_RESTART_SEC = 45


def restart_worker_and_finish(controller: RunningController, prefect: PrefectStack, job_id: str, infrastructure: str,
                              output_in_job_dir: bool = False) -> None:
    """SIGKILL the pool's worker while the job runs; a new worker of the pool must take the job up by
    the infrastructure id on its flow run (`<infrastructure>:…`) and follow it to completion. The
    module's own worker does not come back: call this last in a module. `output_in_job_dir`: the
    backend streams the job's output from its job directory, which records how far the log got; the
    new worker must then not repeat what the flow-run log had (the SDK's first line, once)."""
    wait_for(lambda: controller.admin.job(job_id)["status"] == "running", "the job to run")
    first_line = f"Running job {job_id}"  # the SDK's, when it sets the job running
    if output_in_job_dir:
        streamed = controller.workdir / "dendro-jobs" / job_id / "streamed.json"
        wait_for(lambda: streamed.exists() and any(json.loads(streamed.read_text()).values()),
                 "the job dir to record how far the flow-run log got", timeout=30)
    worker = controller.processes[0]
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    with prefect_worker(prefect.home, prefect.api_url, controller.pool, controller.worker_type, controller.workdir,
                        f"restarted-{controller.pool}.log", controller.worker_env, name=worker_name(controller.pool)):
        job = finished_job(controller.admin, job_id, timeout=120)
        assert job["status"] == "completed", job.get("error")
        flow_run = final_flow_run(job_id)
        assert flow_run.state.is_completed()
        assert "while no worker watched it" not in (flow_run.state.message or ""), \
            f"the app ended before the new worker looked (raise APP_OUTLIVES_RESTART_SEC): {flow_run.state.message}"
        log = wait_for_log(flow_run.id, f"Job {job_id} taken up again as {infrastructure}:", first_line)
        if output_in_job_dir:
            assert log.count(first_line) == 1, log


def infrastructure_id_of(job_id: str, kind: str) -> str:
    """What follows `<kind>:` in the infrastructure id on the job's flow run, once the worker recorded it."""
    run = wait_for(lambda: next((r for r in flow_runs_of_job(job_id) if r.infrastructure_pid), None),
                   f"the infrastructure id of {job_id} on its flow run")
    assert run.infrastructure_pid.startswith(f"{kind}:"), run.infrastructure_pid
    return run.infrastructure_pid.split(":", 1)[1]


def cancel_running_job(controller: RunningController, job_id: str, side: str) -> float:
    """Once the job runs, cancel it from `side`: `prefect` cancels its flow run, `central` deletes the
    job. Returns when (time.monotonic()), to measure how fast its infrastructure goes."""
    wait_for(lambda: controller.admin.job(job_id)["status"] == "running", "the job to run")
    if side == "prefect":
        cancel_flow_run(flow_runs_of_job(job_id)[0].id)
    else:
        record_central_jobs(controller.workdir / "central")  # its key leaves the store with it
        controller.admin.delete_job(job_id)
    return time.monotonic()


def completed_letter_count(controller: RunningController, job_id: str) -> str:
    """Assert that a letter_count job counting 'o' in "hello dendro world" completed, at the central and
    in Prefect, with its output; return its flow-run log, which has the app's line."""
    job = finished_job(controller.admin, job_id)
    assert job["status"] == "completed", job.get("error")
    assert json.loads(controller.admin.output(job_id, "output")) == {"letter": "o", "count": 3}
    flow_run = final_flow_run(job_id)
    assert flow_run.state.is_completed()
    return wait_for_log(flow_run.id, "letter_count: 'o' appears 3 times in 18 characters")


def job_directory_after_its_end(controller, job_id: str) -> Path:
    """The job's directory, checked as its worker left it at the end: mode 0700, no secrets/, and no job key
    in any file (the dendro SDK prints it to its stdout and debug log, which are redacted then)."""
    job_dir = controller.workdir.resolve() / "dendro-jobs" / job_id
    assert job_dir.stat().st_mode & 0o777 == 0o700
    assert not (job_dir / "secrets").exists()
    keys = [secret.value for secret in known_secrets(max_age=1.0) if secret.kind == "job-key"]
    assert keys, "no job key known to the scan"
    holding = [path for path in job_dir.rglob("*") if path.is_file()
               and any(key in path.read_text(errors="replace") for key in keys)]
    assert holding == [], f"files holding a job key: {holding}"
    return job_dir

