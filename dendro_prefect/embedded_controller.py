"""The embedded stack, Dendro's side: a compute resource registered at a central (the stand-in, started here,
or one already running), its pool's worker and its subscription flow run, on a Prefect of `embedded`. The
demo, the tests and the benches bring a controller up with `running_controller`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .config import CONFIG_FILE_NAME, ComputeClientConfig, ComputeResourceConfig
from .controller.routing import DEFAULT_DEPLOYMENTS
from .embedded import Deployment, Prefect, controller_worker
from .protocol.signing import generate_keypair, make_resource_code
from .protocol.v06.registration import read_registration_code
from .stand_in.process import running_stand_in

SUBSCRIPTION_DEPLOYMENT = "dendro-subscription/subscription"


def register_resource(admin: Any, workdir: Path, apps: list[dict], container_method: str = "none",
                      name: str = "dendro-prefect") -> ComputeResourceConfig:
    """A new compute resource registered at the central of `admin` (the stand-in's `StandInAdmin`, or a client
    of another central with its methods) with `apps`, its configuration written into `workdir` with the
    central's PubSub hub as `pubsub_origin`."""
    resource_id, private_key = generate_keypair()
    config = ComputeResourceConfig(compute_resource_id=resource_id, compute_resource_private_key=private_key,
                                   central_url=admin.url, container_method=container_method,
                                   pubsub_origin=admin.pubsub_origin)
    workdir.mkdir(parents=True, exist_ok=True)
    config.write(workdir / CONFIG_FILE_NAME)
    admin.approve(resource_id, make_resource_code(private_key), name)
    admin.set_apps(resource_id, apps)
    return config


def register_compute_client(admin: Any, workdir: Path, service_name: str, name: str = "dendro-prefect",
                            container_method: str = "none", run_method: str = "local") -> ComputeClientConfig:
    """A new compute client of a Dendro 0.6 service at the stand-in of `admin`, registered through its registration
    page as a user does, its jobs going to `run_method`'s pool, its configuration written into `workdir` with the
    stand-in's PubSub hub as `pubsub_origin`."""
    code = read_registration_code(admin.register_compute_client(service_name, name))
    config = ComputeClientConfig(compute_client_id=code.computeClientId,
                                 compute_client_private_key=code.computeClientPrivateKey, compute_client_name=name,
                                 service_name=service_name, central_url=admin.url, container_method=container_method,
                                 default_job_run_method=run_method, available_job_run_methods=[run_method],
                                 pubsub_origin=admin.pubsub_origin)
    workdir.mkdir(parents=True, exist_ok=True)
    config.write(workdir / CONFIG_FILE_NAME)
    return config


def _listening(admin: Any, config: ComputeResourceConfig | ComputeClientConfig) -> bool:
    """Whether the controller has come up: a compute resource reported its apps' spec; a compute client asked the
    service for its PubSub subscription or its jobs (either marks it active there). Both subscribe first."""
    if isinstance(config, ComputeClientConfig):
        return bool(admin.compute_client(config.compute_client_id).get("timestampLastActiveSec"))
    return admin.resource(config.compute_resource_id)["spec"] is not None


async def _cancel_and_wait(flow_run_id, timeout: float) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled, Cancelling

    async with get_client() as client:
        # A run not started yet (Scheduled, or Pending while its process starts) is Cancelled at once: a flow
        # process that then starts finds it final and exits; Cancelling would wait for a flow that never watches it.
        state = (await client.read_flow_run(flow_run_id)).state
        waiting = state is not None and state.type in (StateType.SCHEDULED, StateType.PENDING)
        await client.set_flow_run_state(flow_run_id, Cancelled() if waiting else Cancelling(), force=True)
        deadline = time.monotonic() + timeout
        while not (flow_run := await client.read_flow_run(flow_run_id)).state.is_final():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the subscription flow run {flow_run_id} did not end within {timeout:.0f} s of its "
                                   f"cancellation: {where_run_stands(flow_run)}")
            await asyncio.sleep(0.2)


def where_run_stands(flow_run) -> str:
    """A subscription flow run's state, whether it started, and whether the process its worker started for it
    (on this machine) is alive: what a run that does not start or does not end is first asked."""
    started = f"started {flow_run.start_time.isoformat()}" if flow_run.start_time else "never started"
    pid = flow_run.infrastructure_pid
    try:
        process = f"{Path(f'/proc/{int(pid)}/stat').read_text().rsplit(')', 1)[1].split()[0]} (/proc state)"
    except (TypeError, ValueError, OSError):
        process = "gone" if pid else "none yet"
    return (f"it is {flow_run.state.name} ({flow_run.state.message or 'no message'}; {started}; "
            f"infrastructure pid {pid}: {process})")


def cancel_subscription_run(flow_run_id, timeout: float = 60.0) -> None:
    """Cancel a subscription flow run and wait until it has ended (the controller stops within 2 s of it); raise,
    naming where the run stands, if it has not within `timeout`."""
    asyncio.run(_cancel_and_wait(flow_run_id, timeout))


async def create_subscription_run(parameters: dict, deployment: str = SUBSCRIPTION_DEPLOYMENT):
    """A flow run of the subscription deployment with `parameters`, on the dendro-controller pool (not waited for)."""
    from prefect.deployments import arun_deployment

    return await arun_deployment(deployment, parameters=parameters, timeout=0, as_subflow=False)


@contextmanager
def subscription_run(parameters: dict, deployment: str = SUBSCRIPTION_DEPLOYMENT,
                     stop_timeout: float = 60.0) -> Iterator[str]:
    """A flow run of the subscription deployment with `parameters`; yields its id. At exit it is cancelled and
    waited for: before its worker stops, which would leave it running."""
    flow_run = asyncio.run(create_subscription_run(parameters, deployment))
    try:
        yield str(flow_run.id)
    finally:
        cancel_subscription_run(flow_run.id, stop_timeout)


@dataclass
class RunningController:
    """A compute resource registered at a central, whose subscription flow and pool's worker run."""

    admin: Any  # the central's admin client (see register_resource)
    config: ComputeResourceConfig | ComputeClientConfig
    workdir: Path  # its configuration file, the pool worker's directory (job directories), the stand-in's data
    subscription_run_id: str
    pool: str
    worker_type: str
    worker_env: dict  # what the pool's worker was started with, to start another
    processes: list[subprocess.Popen]  # the pool's worker (a caller may stop or replace it)
    controller_worker: subprocess.Popen  # the process worker that runs the subscription flow run

    @property
    def resource_id(self) -> str:
        return self.config.identity

    @property
    def config_file(self) -> Path:
        return self.workdir / CONFIG_FILE_NAME


@contextmanager
def running_controller(
    prefect: Prefect, workdir: Path, apps: list[dict], *, pool: str | Deployment = "local",
    worker_type: str = "dendro-local", run_method: str = "local", deployments: dict[str, str] | None = None,
    central: Any = None, mock_pubsub: bool = False, container_method: str = "none",
    resource_name: str = "dendro-prefect", sdk_bin: Path | None = None, worker_env: dict[str, str] | None = None,
    worker_name: str | None = None, poll_interval_sec: float | None = None, settle_sec: float | None = None,
    startup_timeout: float = 120.0, registered: ComputeResourceConfig | ComputeClientConfig | None = None,
) -> Iterator[RunningController]:
    """A compute resource with `apps`, registered at `central` (an admin client, see register_resource) or at a
    stand-in of its own in `workdir/central`; a worker of its pool in `workdir` (with the dendro SDK's `sdk_bin`
    first on its PATH, and `worker_env`); and its subscription flow run, on `prefect`'s controller worker (or
    one of its own), routing `run_method` to its pool's deployment and other runMethods as `deployments` says,
    else as prefect.yaml does. Its pool: `pool`, deployed already (prefect.yaml's `local` by default), of
    `worker_type`; or a pool of its own, a `Deployment` deployed (`prefect deploy`) while the rest starts. The
    subscription parameters left None keep the flow's defaults. Yields once the flow has reported the apps'
    spec (it has subscribed); at exit the flow run is cancelled and ended, then the workers stop. A resource
    `registered` already at `central` (its configuration in `workdir`, e.g. imported from the original daemon's)
    keeps its registration and apps; so does a Dendro 0.6 compute client `registered` at a service of `central`
    (`register_compute_client`)."""
    env = {"PATH": f"{sdk_bin}{os.pathsep}{os.environ['PATH']}"} if sdk_bin else {}
    env.update(worker_env or {})
    with ExitStack() as stack:
        if isinstance(pool, Deployment):
            deployed = stack.enter_context(prefect.deploying(pool))
            pool, worker_type, deployment = pool.pool, pool.worker_type, pool.full_name
        else:
            deployed, deployment = (lambda: []), f"dendro-job/{pool}"
        admin = central or stack.enter_context(running_stand_in(workdir / "central", mock_pubsub=mock_pubsub))
        config = registered or register_resource(admin, workdir, apps, container_method, resource_name)
        controller = prefect.controller_worker or stack.enter_context(
            controller_worker(prefect, f"controller-{workdir.name}.log"))
        job_worker = stack.enter_context(prefect.worker(pool, worker_type, workdir, f"{pool}.log", env, worker_name))
        parameters = {"config_file": str(workdir / CONFIG_FILE_NAME),
                      "deployments": {**DEFAULT_DEPLOYMENTS, **(deployments or {}), run_method: deployment},
                      "poll_interval_sec": poll_interval_sec, "settle_sec": settle_sec}
        flow_run_id = stack.enter_context(subscription_run({k: v for k, v in parameters.items() if v is not None}))
        processes = [job_worker]
        # At exit, first of all: the pool's worker (if still there) stops while the flow run ends.
        stack.callback(lambda: [p.send_signal(signal.SIGINT) for p in processes if p.poll() is None])
        deadline = time.monotonic() + startup_timeout
        while not _listening(admin, config):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the subscription flow run {flow_run_id} did not come up within "
                                   f"{startup_timeout:.0f} s; see the controller worker's log in {prefect.home}")
            time.sleep(0.1)
        deployed()
        yield RunningController(admin, config, workdir, flow_run_id, pool, worker_type, env, processes, controller)
