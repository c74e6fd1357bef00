"""`dendro-prefect status`: the compute resource as the Prefect API sees it. Work pools of our worker
types (and the subscription flow's), their workers, the Dendro jobs that hold a flow run in Pending,
Running or Cancelling, and every controller's heartbeat (controller/heartbeat.py)."""

from __future__ import annotations

from datetime import datetime

import anyio
import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.settings import PREFECT_API_URL
from pydantic import BaseModel
from rich.console import Console, Group
from rich.table import Table

from .controller.heartbeat import ControllerHeartbeat, read_heartbeats, utcnow

JOB_FLOW = "dendro-job"
SUBSCRIPTION_FLOW = "dendro-subscription"
WORKER_TYPE_PREFIX = "dendro-"
RUNNING_STATES = [StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]
PAGE = 200


class StatusError(Exception):
    """The Prefect API cannot be read; the message is one line."""


class PoolStatus(BaseModel):
    name: str
    type: str
    status: str | None
    concurrency_limit: int | None
    active_slots: int | None
    paused: bool


class WorkerStatus(BaseModel):
    pool: str
    name: str
    status: str
    last_heartbeat: datetime | None


class RunningJob(BaseModel):
    job_id: str
    app: str | None
    pool: str | None
    state: str
    infrastructure_id: str | None
    since: datetime | None
    flow_run_id: str
    flow_run_name: str


class ControllerStatus(ControllerHeartbeat):
    last_contact_age_sec: float | None
    flow_run_state: str | None  # None: the subscription flow run is not (or no longer) on the server


class StatusReport(BaseModel):
    api_url: str | None
    at: datetime
    pools: list[PoolStatus]
    workers: list[WorkerStatus]
    jobs: list[RunningJob]
    controllers: list[ControllerStatus]


def api_url() -> str | None:
    return PREFECT_API_URL.value()


async def collect_status(client: PrefectClient | None = None) -> StatusReport:
    """Read everything from the Prefect API (PREFECT_API_URL, as Prefect's CLI); StatusError when it
    does not answer."""
    if client is None:
        async with get_client() as own_client:
            return await collect_status(own_client)
    error = await client.api_healthcheck()
    if error is not None:
        raise StatusError(f"cannot reach the Prefect API at {api_url() or 'its ephemeral server'}: {_line(error)}")
    try:
        pools = await _pools(client)
        workers: list[WorkerStatus] = []

        async def read_workers(pool: PoolStatus) -> None:
            for worker in await client.read_workers_for_work_pool(pool.name):
                workers.append(WorkerStatus(pool=pool.name, name=worker.name, status=worker.status.value,
                                            last_heartbeat=worker.last_heartbeat_time))

        async with anyio.create_task_group() as group:
            for pool in pools:
                group.start_soon(read_workers, pool)
        jobs = [_running_job(run) for run in await _running_job_runs(client)]
        controllers = await _controllers(client)
    except httpx.HTTPError as error:
        raise StatusError(f"the Prefect API at {api_url()} failed: {_line(error)}") from error
    workers.sort(key=lambda w: (w.pool, w.name))
    return StatusReport(api_url=api_url(), at=utcnow(), pools=pools, workers=workers, jobs=jobs,
                        controllers=controllers)


async def _pools(client: PrefectClient) -> list[PoolStatus]:
    subscription_pools = {d.work_pool_name for d in await client.read_deployments(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[SUBSCRIPTION_FLOW])))}
    return [
        PoolStatus(name=pool.name, type=pool.type, status=pool.status.value if pool.status else None,
                   concurrency_limit=pool.concurrency_limit, active_slots=pool.active_slots, paused=pool.is_paused)
        for pool in sorted(await client.read_work_pools(), key=lambda p: p.name)
        if pool.type.startswith(WORKER_TYPE_PREFIX) or pool.name in subscription_pools
    ]


async def _running_job_runs(client: PrefectClient) -> list[FlowRun]:
    runs: list[FlowRun] = []
    while True:
        page = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[JOB_FLOW])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=RUNNING_STATES))),
            sort=FlowRunSort.START_TIME_ASC, limit=PAGE, offset=len(runs))
        runs.extend(page)
        if len(page) < PAGE:
            return runs


def _running_job(run: FlowRun) -> RunningJob:
    app = next((tag.removeprefix("app:") for tag in run.tags if tag.startswith("app:")), None)
    return RunningJob(
        job_id=str(run.parameters.get("job_id", "")), app=app, pool=run.work_pool_name,
        state=run.state.name if run.state else "unknown", infrastructure_id=run.infrastructure_pid,
        since=run.state.timestamp if run.state else None, flow_run_id=str(run.id), flow_run_name=run.name,
    )


async def _controllers(client: PrefectClient) -> list[ControllerStatus]:
    heartbeats = await read_heartbeats(client)
    run_ids = [h.flow_run_id for h in heartbeats if h.flow_run_id]
    states: dict[str, str] = {}
    if run_ids:
        runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)))
        states = {str(run.id): run.state.name for run in runs if run.state}
    now = utcnow()
    return [
        ControllerStatus(**h.model_dump(),
                         last_contact_age_sec=(now - h.last_contact).total_seconds() if h.last_contact else None,
                         flow_run_state=states.get(h.flow_run_id or ""))
        for h in heartbeats
    ]


def _line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    seconds = max(0.0, (now - moment).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _when(moment: datetime | None, now: datetime) -> str:
    return "" if moment is None else f"{moment.astimezone().strftime('%Y-%m-%d %H:%M:%S')} ({ago(moment, now)})"


def _identity(controller: ControllerStatus) -> str:
    """Which compute resource or client: its kind (the protocols' ids look alike in a table) and its id, shortened."""
    kind = "client" if controller.protocol == "dendro-0.6" else "resource"
    identity = controller.compute_resource_id
    return f"{kind} {identity[:16]}…" if len(identity) > 16 else f"{kind} {identity}"


def render(report: StatusReport, console: Console) -> None:
    console.print(status_view(report))


def status_view(report: StatusReport) -> Group:
    """The report as one screen: the API, then a table per part (or a line saying it has none)."""
    now = report.at
    parts: list = [f"Prefect API: {report.api_url or 'ephemeral server'}"]
    pools = Table("pool", "type", "status", "concurrency", "paused", title="Work pools")
    for pool in report.pools:
        limit = "unlimited" if pool.concurrency_limit is None else str(pool.concurrency_limit)
        pools.add_row(pool.name, pool.type, pool.status or "", f"{pool.active_slots or 0} / {limit}",
                      "yes" if pool.paused else "no")
    workers = Table("pool", "worker", "status", "last heartbeat", title="Workers")
    for worker in report.workers:
        style = "green" if worker.status == "ONLINE" else "red"
        workers.add_row(worker.pool, worker.name, f"[{style}]{worker.status}[/]", _when(worker.last_heartbeat, now))
    jobs = Table("job", "app", "pool", "state", "infrastructure id", "since", title="Running jobs")
    for job in report.jobs:
        jobs.add_row(job.job_id, job.app or "", job.pool or "", job.state, job.infrastructure_id or "",
                     _when(job.since, now))
    for job_id in (job_id for c in report.controllers for job_id in c.jobs_outside_prefect):
        jobs.add_row(job_id, "", "", "running outside Prefect", "launched by another controller", "")
    controllers = Table("compute resource / client", "central", "subscription run", "last contact", "PubSub", "apps",
                        "submitted", "last error", title="Controllers")
    for c in report.controllers:
        run_state = c.flow_run_state or "gone"
        controllers.add_row(
            _identity(c), c.central_url, run_state, _when(c.last_contact, now),
            "connected" if c.pubsub_connected else "polling", str(c.apps_loaded), str(c.jobs_submitted),
            f"{c.last_error} ({ago(c.last_error_at, now)})" if c.last_error else "",
        )
    for table, empty in ((pools, "no work pools of dendro worker types"), (workers, "no workers"),
                         (jobs, "no running jobs"), (controllers, "no controller heartbeats")):
        parts.append(table if table.row_count else f"[dim]{table.title}: {empty}[/]")
    return Group(*parts)
