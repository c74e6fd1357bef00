"""End to end with real parts: a Prefect server (SQLite), the central stand-in, `prefect deploy --all`
of our prefect.yaml, a process worker running the subscription flow, a `dendro-local` worker, and
apps written with the real dendro SDK."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags, LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import arun_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelling

from dendro_prefect.bridge.routing import DEFAULT_DEPLOYMENTS
from dendro_prefect.central.admin_client import CentralAdmin
from dendro_prefect.central.process import running_central
from dendro_prefect.config import ComputeResourceConfig
from dendro_prefect.embedded import deploy_all, prefect_server, prefect_worker
from dendro_prefect.protocol.signing import generate_keypair, make_resource_code
from tests.conftest import LETTER_COUNT_APP, REPO

IMAGE = "dendro-letter-count:local"


@dataclass
class PrefectStack:
    home: Path
    api_url: str


@pytest.fixture(scope="session")
def prefect_stack(tmp_path_factory) -> PrefectStack:
    home = tmp_path_factory.mktemp("prefect")
    with prefect_server(home) as api_url, temporary_settings({PREFECT_API_URL: api_url}):
        deploy_all(home, api_url, REPO)
        yield PrefectStack(home, api_url)


@dataclass
class Controller:
    """A registered compute resource whose subscription flow and dendro-local worker are running."""

    admin: CentralAdmin
    config: ComputeResourceConfig
    workdir: Path
    subscription_run_id: str
    pool: str
    worker_type: str
    worker_env: dict
    processes: list  # the job pool's worker process

    @property
    def resource_id(self) -> str:
        return self.config.compute_resource_id


def run(coroutine):
    return asyncio.run(coroutine)


def wait_for(condition, what: str, timeout: float = 60.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


async def _flow_runs_of_job(job_id: str) -> list[FlowRun]:
    async with get_client() as client:
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"job:{job_id}"])))


def flow_runs_of_job(job_id: str) -> list[FlowRun]:
    return run(_flow_runs_of_job(job_id))


def final_flow_run(job_id: str, timeout: float = 60.0) -> FlowRun:
    def final():
        runs = flow_runs_of_job(job_id)
        return runs[0] if runs and runs[0].state and runs[0].state.is_final() else None

    return wait_for(final, f"a final flow run of job {job_id}", timeout)


def flow_run_log(flow_run_id) -> str:
    async def read() -> str:
        async with get_client() as client:
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            return "\n".join(log.message for log in logs)

    return run(read())


def wait_for_log(flow_run_id, *texts: str, timeout: float = 30.0) -> str:
    """The flow run's log once it holds every text: logs reach the server in batches."""
    def complete_log() -> str | None:
        log = flow_run_log(flow_run_id)
        return log if all(text in log for text in texts) else None

    return wait_for(complete_log, f"log lines {texts} of flow run {flow_run_id}", timeout, interval=0.5)


def cancel_flow_run(flow_run_id) -> None:
    async def cancel() -> None:
        async with get_client() as client:
            await client.set_flow_run_state(flow_run_id, Cancelling(), force=True)

    run(cancel())


def finished_job(admin: CentralAdmin, job_id: str, timeout: float = 90.0) -> dict:
    return wait_for(lambda: (j := admin.job(job_id))["status"] in ("completed", "failed") and j,
                    f"job {job_id} to finish", timeout)


def letter_count_spec_uri(workdir: Path, image: str | None = None, executable: str = "/app/main.py") -> str:
    """The letter_count spec as a file: as is for a plain process, or naming a docker image (and the
    app's executable in it)."""
    if image is None:
        return (LETTER_COUNT_APP / "spec.json").as_uri()
    spec = json.loads((LETTER_COUNT_APP / "spec.json").read_text())
    spec.update(appImage=image, appExecutable=executable, executable=executable)
    path = workdir / "letter_count_image_spec.json"
    path.write_text(json.dumps(spec))
    return path.as_uri()


def create_job_pool(pool: str, worker_type: str = "dendro-local", job_variables: dict | None = None) -> str:
    """A work pool with a `dendro-job/<pool>` deployment; returns the deployment's name. Each
    controller of the tests has its own, so that no worker of another takes its jobs."""
    async def create() -> None:
        async with get_client() as client:
            await client.create_work_pool(WorkPoolCreate(name=pool, type=worker_type), overwrite=True)
            flow_id = await client.create_flow_from_name("dendro-job")
            await client.create_deployment(flow_id=flow_id, name=pool, work_pool_name=pool,
                                           entrypoint="flows/dendro_job.py:dendro_job",
                                           job_variables=job_variables or {})

    run(create())
    return f"dendro-job/{pool}"


@contextmanager
def running_controller(prefect: PrefectStack, workdir: Path, sdk_bin: Path, container_method: str = "none",
                       apps: list[dict] | None = None, poll_interval_sec: float = 2.0, mock_pubsub: bool = False,
                       pool: str | None = None, worker_type: str = "dendro-local", run_method: str = "local",
                       job_variables: dict | None = None, worker_env: dict | None = None):
    """A controller whose jobs of `run_method` go to `pool` (by default a pool of its own; `local` is
    prefect.yaml's)."""
    workdir.mkdir(parents=True, exist_ok=True)
    pool = pool or f"{run_method}-{workdir.name}"
    deployment = f"dendro-job/{pool}" if pool == "local" else create_job_pool(pool, worker_type, job_variables)
    deployments = {**DEFAULT_DEPLOYMENTS, run_method: deployment}
    with ExitStack() as stack:
        admin = stack.enter_context(running_central(workdir / "central", mock_pubsub=mock_pubsub))
        resource_id, private_key = generate_keypair()
        config = ComputeResourceConfig(compute_resource_id=resource_id, compute_resource_private_key=private_key,
                                       central_url=admin.url, container_method=container_method)
        config_file = workdir / ".dendro_compute_resource.json"
        config.write(config_file)
        admin.approve(resource_id, make_resource_code(private_key))
        admin.set_apps(resource_id, apps or [{"name": "letter_count", "specUri": letter_count_spec_uri(workdir)}])
        stack.enter_context(prefect_worker(prefect.home, prefect.api_url, "dendro-controller", "process", REPO,
                                           f"controller-{workdir.name}.log"))
        job_worker_env = {"PATH": f"{sdk_bin}{os.pathsep}{os.environ['PATH']}", **(worker_env or {})}
        job_worker = stack.enter_context(prefect_worker(prefect.home, prefect.api_url, pool, worker_type, workdir,
                                                        f"{pool}.log", job_worker_env))
        flow_run = run(arun_deployment(
            "dendro-subscription/subscription", timeout=0, as_subflow=False,
            parameters={"config_file": str(config_file), "poll_interval_sec": poll_interval_sec,
                        "deployments": deployments},
        ))
        try:
            wait_for(lambda: admin.resource(resource_id)["spec"] is not None, "the subscription flow to report the spec")
            yield Controller(admin, config, workdir, str(flow_run.id), pool, worker_type, job_worker_env, [job_worker])
        finally:
            cancel_flow_run(flow_run.id)
            wait_for(lambda: run(_read_state(flow_run.id)).is_final(), "the subscription flow run to end", 60)


async def _read_state(flow_run_id):
    async with get_client() as client:
        return (await client.read_flow_run(flow_run_id)).state


@pytest.fixture(scope="module")
def controller(prefect_stack, tmp_path_factory, sdk_bin) -> Controller:
    with running_controller(prefect_stack, tmp_path_factory.mktemp("controller"), sdk_bin, pool="local") as running:
        yield running


@pytest.fixture(scope="session")
def docker_client():
    """A real docker engine (scripts/test.sh starts one) with an image of the letter_count app built
    here: no registry is reachable, so scripts/build-app-image.sh builds it from a debootstrapped base
    and the dendro SDK's wheels."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as error:
        pytest.skip(f"no docker engine on this machine ({error}); scripts/test.sh starts one")
    subprocess.run(["bash", str(REPO / "scripts" / "build-app-image.sh"), str(REPO / "apps" / "letter_count"), IMAGE],
                   check=True, capture_output=True, timeout=900)
    return client
