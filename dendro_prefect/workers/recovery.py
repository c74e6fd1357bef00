"""A worker taking up the jobs of its pool that a lost worker left behind.

Running (or cancelling) runs: their jobs still run (or have ended) on the infrastructure recorded on the
run; they are followed instead of launched again (a cancelling one is then killed by the follow). Pending
runs, and running or cancelling ones without that record (a worker sets Running as soon as its launch
returns, and Prefect records the infrastructure in a call of its own, so a worker lost between the two
leaves a Running run without it): the worker was lost while launching them; the central says how far the
launch got (workers set a job `starting` before any launch): a job still pending goes back to the queue, a
launched one is followed on the infrastructure its job directory records, and one launched without a record
is failed with the reason (a cancelling one cancelled), never launched twice.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import Cancelled, Failed, Running, Scheduled

from .job_run import JobRun
from .watch import RUNS_PAGE

if TYPE_CHECKING:
    from .base import DendroWorker

NOT_LAUNCHED = "not-launched:"  # the infrastructure id of a run whose job was refused
# A Pending run without a worker's label this old was left by a worker lost before it labelled it.
STRANDED_PENDING_SEC = 30.0
STRANDED_STATES = (StateType.PENDING, StateType.RUNNING, StateType.CANCELLING)


def launched(flow_run: FlowRun) -> bool:
    """Whether the run records the infrastructure its job was launched on (not a refusal's id)."""
    return bool(flow_run.infrastructure_pid) and not flow_run.infrastructure_pid.startswith(NOT_LAUNCHED)


class Recovery:
    def __init__(self, worker: "DendroWorker") -> None:
        self.worker = worker
        self._offline_workers_seen: set[str] | None = None  # None: not looked yet

    async def take_up_orphans(self) -> None:
        """Running runs are read only when a worker has newly gone offline (or this one just started): a
        run becomes an orphan only then, and reading every running run each time would load the server;
        pending runs are few (the launches in flight) and are read every time."""
        worker = self.worker
        workers = await worker.client.read_workers_for_work_pool(worker.work_pool_name)
        # A run recorded under this worker's name but not followed here is its predecessor's: a
        # worker restarted under its name need not wait for Prefect to see the old one offline.
        online = {w.name for w in workers if w.status and w.status.value == "ONLINE"} - {worker.name}
        offline = {w.name for w in workers} - online
        newly_offline = self._offline_workers_seen is None or not offline <= self._offline_workers_seen
        states = [StateType.PENDING] + ([StateType.RUNNING, StateType.CANCELLING] if newly_offline else [])
        # Runs this worker handles now, or handled while the runs were read, are not orphans.
        busy = worker.busy_run_ids()
        runs = await self._pool_runs(states)
        busy |= worker.busy_run_ids()
        now = datetime.now(timezone.utc)
        for flow_run in runs:
            owner = (flow_run.labels or {}).get("prefect.worker.name")
            if flow_run.id in busy or owner in online or flow_run.state is None:
                continue
            if flow_run.state.type == StateType.PENDING:
                # A live worker labels a run as soon as it is Pending; one without a label is stranded
                # only once that has had time to happen.
                if owner is None and (now - flow_run.state.timestamp).total_seconds() < STRANDED_PENDING_SEC:
                    continue
                worker.start_following(flow_run, self._take_up_stranded)
            elif launched(flow_run):
                worker.start_following(flow_run, self.take_up)
            else:  # lost between Running and Prefect's record of its launch
                worker.start_following(flow_run, self._take_up_stranded)
        self._offline_workers_seen = offline

    async def _pool_runs(self, states: list[StateType]) -> list[FlowRun]:
        runs: list[FlowRun] = []
        while True:
            page = await self.worker.client.read_flow_runs(
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self.worker.work_pool_name])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=states))),
                limit=RUNS_PAGE, offset=len(runs),
            )
            runs.extend(page)
            if len(page) < RUNS_PAGE:
                return runs

    async def take_up(self, flow_run: FlowRun) -> None:
        """Follow a launched job again, to its end."""
        worker = self.worker
        job_run = JobRun(flow_run, await worker.configuration_of(flow_run), worker,
                         worker.get_flow_run_logger(flow_run))
        if not await job_run.take_up():
            return
        if flow_run.state is not None and flow_run.state.type == StateType.PENDING:
            await worker.set_state(flow_run, Running())
        await worker.follow_taken_up(job_run)

    async def _take_up_stranded(self, flow_run: FlowRun) -> None:
        worker = self.worker
        run_logger = worker.get_flow_run_logger(flow_run)
        job_id = str(flow_run.parameters.get("job_id", ""))
        try:
            flow_run = await worker.client.read_flow_run(flow_run.id)
            if flow_run.state is None or flow_run.state.type not in STRANDED_STATES:
                return
            if launched(flow_run):
                return await self.take_up(flow_run)
            job_run = JobRun(flow_run, await worker.configuration_of(flow_run), worker, run_logger)
            central = worker.central_jobs(job_run.configuration.config_file)
            document = await central.unfinished_job(job_id, time.monotonic())
            recorded = job_run.job_dir.recorded_launch()
            if document is not None and document.get("status") == "pending":
                run_logger.warning("Job %s: its worker was lost before launching it; back in the queue", job_id)
                await worker.client.set_flow_run_state(
                    flow_run.id, Scheduled(message="Its worker was lost before launching it; back in the queue"),
                    force=True)
            elif recorded is not None:
                await worker.client.update_flow_run(flow_run.id, infrastructure_pid=recorded)
                await self.take_up(flow_run.model_copy(update={"infrastructure_pid": recorded}))
            elif flow_run.state.type == StateType.CANCELLING:
                await worker.set_state(flow_run, Cancelled(message="Its worker was lost; nothing of it is left to kill"))
            elif document is None:
                await worker.set_state(flow_run, await job_run.ended_unwatched())
            else:
                job = await central.job(job_id, statuses=("starting", "running"))
                reason = ("its worker was lost while launching it, before the launch was recorded; whether its "
                          "app started is unknown, so it is not launched again")
                run_logger.error("Job %s failed: %s", job_id, reason)
                await worker.fail_at_central(central.client, job, reason, run_logger)
                await worker.set_state(flow_run, Failed(message=reason))
        except Exception as error:
            run_logger.error("Cannot take up job %s left pending by a lost worker: %s", job_id, error)
