"""`dendro-prefect up`: a whole single-host compute resource in the foreground, as `prefect server start` is a
whole server: the Prefect server (ours, unless PREFECT_API_URL names one), the work pools of the resource's
`available_job_run_methods` and their deployments only, a worker per pool, the controller's process worker and
the subscription flow run; a live status until Ctrl-C or SIGTERM, which stop everything it started.

Idempotent: pools and deployments that exist are kept (an admin's edits included; only what the options say is
changed); the Prefect server's database persists in its home; a subscription flow run of the resource left
unfinished by an `up` that was killed is cancelled before the new one starts. Workers have fixed names
(`<pool>@<host>`), so a restarted `up` takes up the jobs that ran on while it was down.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled
from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type
from rich.console import Console
from rich.live import Live

from .config import CONFIG_FILE_NAME, PROTOCOL_NAMES, SiteConfig
from .controller.heartbeat import read_heartbeats
from .controller.routing import DEFAULT_DEPLOYMENTS
from .embedded import PROJECT_DIR, WORK_POOLS, Prefect, controller_worker, prefect_cli, running_prefect
from .embedded_controller import create_subscription_run, subscription_run
from .status import StatusError, collect_status, status_view

CONTROLLER_POOL = "dendro-controller"
SUBSCRIPTION = "subscription"  # prefect.yaml's deployment of the subscription flow
REFRESH_SEC = 2.0


class UpError(RuntimeError):
    """`up` cannot go on; the message is one line naming the cause."""


@dataclass
class UpOptions:
    """The workers run in the configuration's directory (their job directories go there, and they find the
    configuration there); the embedded Prefect server keeps its database and our processes' logs in `home`."""

    config_file: Path
    database: str = "postgres"
    concurrency_limits: dict[str, int] = field(default_factory=dict)  # pool → limit
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)  # pool → job variable → default

    @property
    def directory(self) -> Path:
        return self.config_file.parent

    @property
    def home(self) -> Path:
        return self.directory / "prefect"


def pools_of(config: SiteConfig) -> dict[str, str]:
    """The work pools (name → worker type) the resource's run methods need, and the controller's."""
    pools = {CONTROLLER_POOL: WORK_POOLS[CONTROLLER_POOL]}
    for method in config.available_job_run_methods:
        name = DEFAULT_DEPLOYMENTS[method].split("/", 1)[1]
        pools[name] = WORK_POOLS[name]
    return pools


def job_pools(pools: dict[str, str]) -> dict[str, str]:
    """The pools that run jobs: all but the controller's."""
    return {name: worker_type for name, worker_type in pools.items() if name != CONTROLLER_POOL}


def parse_assignments(assignments: list[str], what: str) -> dict[str, str]:
    """`KEY=VALUE` options; a malformed one is an UpError naming it."""
    parsed = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key:
            raise UpError(f"{what} {assignment!r} is not KEY=VALUE")
        parsed[key] = value
    return parsed


def options_for_pools(pools: dict[str, str], config_file: Path, limits: list[str],
                      settings: list[str]) -> tuple[dict, dict]:
    """`--concurrency-limit POOL=N` and `--set POOL.VARIABLE=VALUE` (VALUE as JSON where it parses, else a string),
    checked against the pools `up` runs. A configuration file of another name than the workers look for is
    the job pools' `config_file` default."""
    concurrency = {}
    for pool, value in parse_assignments(limits, "--concurrency-limit").items():
        if pool not in job_pools(pools):
            raise UpError(f"--concurrency-limit {pool}: not a job pool of this resource ({', '.join(pools)})")
        if not value.isdigit():
            raise UpError(f"--concurrency-limit {pool}={value}: not a whole number")
        concurrency[pool] = int(value)
    variables: dict[str, dict[str, Any]] = {}
    for key, value in parse_assignments(settings, "--set").items():
        pool, dot, variable = key.partition(".")
        if not dot or pool not in job_pools(pools):
            raise UpError(f"--set {key}: not POOL.VARIABLE of a job pool of this resource")
        try:
            variables.setdefault(pool, {})[variable] = json.loads(value)
        except ValueError:
            variables.setdefault(pool, {})[variable] = value
    if config_file.name != CONFIG_FILE_NAME:
        for pool in job_pools(pools):
            variables.setdefault(pool, {}).setdefault("config_file", str(config_file))
    return concurrency, variables


def with_defaults(template: dict, defaults: dict[str, Any], pool: str) -> dict:
    """The base job template with these variables' defaults (the pool's settings form shows them)."""
    properties = template["variables"]["properties"]
    for name, value in defaults.items():
        if name not in properties:
            raise UpError(f"--set {pool}.{name}: the pool has no such variable ({', '.join(sorted(properties))})")
        properties[name]["default"] = value
    return template


async def ensure_pools(client: PrefectClient, pools: dict[str, str], options: UpOptions) -> list[str]:
    """Create the missing pools with their type's template; apply the options to every pool. Returns the created."""
    created = []
    for name, worker_type in pools.items():
        try:
            pool = await client.read_work_pool(name)
        except ObjectNotFound:
            template = await get_default_base_job_template_for_infrastructure_type(worker_type)
            await client.create_work_pool(WorkPoolCreate(name=name, type=worker_type, base_job_template=template))
            created.append(name)
            pool = await client.read_work_pool(name)
        if pool.type != worker_type:
            raise UpError(f"work pool {name} exists with type {pool.type}, not {worker_type}")
        update = {}
        if options.variables.get(name):
            update["base_job_template"] = with_defaults(pool.base_job_template, options.variables[name], name)
        if name in options.concurrency_limits:
            update["concurrency_limit"] = options.concurrency_limits[name]
        if update:
            await client.update_work_pool(name, WorkPoolUpdate(**update))
    return created


async def cancel_leftover_subscription(client: PrefectClient, compute_resource_id: str) -> str | None:
    """The resource's subscription flow run that an earlier controller left unfinished (an `up` killed with -9):
    Cancelled, so that one controller serves the resource. Returns its name."""
    heartbeat = next((h for h in await read_heartbeats(client) if h.compute_resource_id == compute_resource_id), None)
    if heartbeat is None or heartbeat.flow_run_id is None:
        return None
    try:
        flow_run = await client.read_flow_run(heartbeat.flow_run_id)
    except ObjectNotFound:
        return None
    if flow_run.state is None or flow_run.state.is_final():
        return None
    await client.set_flow_run_state(flow_run.id, Cancelled(message="replaced by a new subscription flow run of the resource"),
                                    force=True)
    return flow_run.name


async def start_subscription(config_file: Path, config: SiteConfig) -> tuple[str, str | None]:
    """A subscription flow run of the resource on the dendro-controller pool (systemd's
    dendro-prefect-subscription.service), after cancelling one an earlier controller left unfinished.
    Returns the new run's name and the cancelled one's."""
    async with get_client() as client:
        leftover = await cancel_leftover_subscription(client, config.identity)
    flow_run = await create_subscription_run({"config_file": str(config_file)})
    return flow_run.name, leftover


def deploy(prefect: Prefect, pools: dict[str, str]) -> list[str]:
    """prefect.yaml's deployments of these pools only (`prefect deploy --name ...`): one for a pool that does not
    exist would fail the command. Returns their names."""
    names = [SUBSCRIPTION, *job_pools(pools)]
    prefect_cli(prefect.home, prefect.api_url, "--no-prompt", "deploy",
                *[arg for name in names for arg in ("--name", name)], cwd=PROJECT_DIR)
    return names


@contextmanager
def prefect_to_use(options: UpOptions, api_url: str | None) -> Iterator[Prefect]:
    """The Prefect server that PREFECT_API_URL names, or one of ours in `options.home` (stopped at exit)."""
    if api_url:
        options.home.mkdir(parents=True, exist_ok=True)
        yield Prefect(options.home, api_url)
        return
    with running_prefect(options.home, database=options.database, project=False, controller=False) as prefect:
        yield prefect


def worker_name(pool: str) -> str:
    return f"{pool}@{socket.gethostname()}"


def _raise_keyboard_interrupt(signum, frame) -> None:
    """Ctrl-C and SIGTERM alike, wherever the main thread is. Being Python's own SIGINT handler no longer, it also
    holds inside `asyncio.run`, whose own handler would only cancel the status read and let `up` run on."""
    raise KeyboardInterrupt


def run_up(options: UpOptions, config: SiteConfig, api_url: str | None, console: Console) -> None:
    """Bring it all up, show the status until Ctrl-C or SIGTERM, stop all of it (at exit of the ExitStack, in
    reverse: the subscription flow run ends before the workers, the workers before the server)."""
    pools = pools_of(config)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_keyboard_interrupt)
    with ExitStack() as stack:
        try:
            console.print(f"Starting a {PROTOCOL_NAMES[config.protocol]} {config.identity[:16]}… of "
                          f"{config.central_url} with work pools {', '.join(pools)} …")
            prefect = stack.enter_context(prefect_to_use(options, api_url))
            created, leftover = asyncio.run(_prepare(pools, options, config))
            console.print(f"Prefect UI: {prefect.api_url.removesuffix('/api')}")
            console.print(f"Work pools created: {', '.join(created) or 'none (all there)'}")
            if leftover:
                console.print(f"An earlier subscription flow run {leftover} was left unfinished: cancelled")
            console.print(f"Deployments of prefect.yaml applied: {', '.join(deploy(prefect, pools))}")
            stack.enter_context(controller_worker(prefect, "up-controller.log", name=worker_name(CONTROLLER_POOL)))
            for pool, worker_type in job_pools(pools).items():
                stack.enter_context(prefect.worker(pool, worker_type, options.directory, f"up-{pool}.log",
                                                   name=worker_name(pool)))
            flow_run_id = stack.enter_context(subscription_run({"config_file": str(options.config_file)}))
            console.print(f"Subscription flow run {flow_run_id} started; logs in {prefect.home}. Ctrl-C stops it all.")
            show_status(console)
        except KeyboardInterrupt:
            console.print("Stopping: the subscription flow run, the workers, then the server …")
    console.print("Stopped.")


async def _prepare(pools: dict[str, str], options: UpOptions,
                   config: SiteConfig) -> tuple[list[str], str | None]:
    """On the Prefect server of this process's PREFECT_API_URL: ours (running_prefect sets it) or the one named."""
    async with get_client() as client:
        created = await ensure_pools(client, pools, options)
        leftover = await cancel_leftover_subscription(client, config.identity)
    return created, leftover


def show_status(console: Console) -> None:
    """The live status, a screen refreshed every REFRESH_SEC, until interrupted; where the output is no
    terminal, a line per change of the running jobs instead."""
    if console.is_terminal:
        with Live(console=console, refresh_per_second=1, screen=False) as live:
            while True:
                try:
                    live.update(status_view(asyncio.run(collect_status())))
                except StatusError as error:
                    live.update(f"status unavailable: {error}")
                time.sleep(REFRESH_SEC)
    last = None
    while True:
        try:
            report = asyncio.run(collect_status())
            line = (f"{len(report.workers)} workers ({sum(w.status == 'ONLINE' for w in report.workers)} online), "
                    f"{len(report.jobs)} running jobs")
        except StatusError as error:
            line = f"status unavailable: {error}"
        if line != last:
            console.print(line)
            last = line
        time.sleep(REFRESH_SEC)
