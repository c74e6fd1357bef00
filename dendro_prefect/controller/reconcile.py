"""Reconciliation: the central's unfinished jobs of this compute resource against their flow runs.

Prefect is the only state store: a job's flow run is found by its tags (`resource:<id>`, `job:<id>`),
so a restarted controller knows everything its predecessor did. Each disagreement gets one action:

- a job no longer unfinished at the central (deleted, failed, completed) whose flow run is active:
  the run is cancelled, and the worker that follows it removes the infrastructure;
- a `starting`/`running` job whose flow run ended (cancelled in the UI, crashed, failed), or was
  deleted: the job is failed at the central with the reason;
- a `starting`/`running` job of which this Prefect never had a flow run (Prefect's events, kept
  `PREFECT_EVENTS_RETENTION_PERIOD`, 7 days by default, hold none: launched by another controller, such
  as the original daemon before the switch, or before the Prefect database was replaced): not ours to
  fail; it is left to finish, logged once and shown by `dendro-prefect status` as running outside Prefect;
- a pending job whose flow run already ended: it is not launched again; the job is failed with why.
  Except a run that crashed before its launch (Prefect's own API failed the worker, e.g. SQLite's
  "database is locked"): a pending job was never launched, so the run goes back to the queue, a few times.

A worker that follows a job notices the job's end itself within seconds, and fails the job at the
central itself when its run ends; the controller acts only on disagreements that outlast
`settle_sec`, so the two never race. A run not yet taken by a worker (Scheduled) has no one else to
notice, and is cancelled at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect.states import Cancelled, Cancelling, Scheduled

from ..protocol.models import DendroJob
from .routing import job_tag, resource_tag

UNFINISHED_RUN_STATES = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.CANCELLING, StateType.PAUSED]
PAGE = 200  # flow runs per API call (Prefect's page size)
SETTLE_SEC = 30.0
MAX_REQUEUES = 3  # of a run that crashed before its launch


def job_id_of(flow_run: FlowRun) -> str:
    return str(flow_run.parameters.get("job_id", ""))


def why_run_ended(flow_run: FlowRun | None) -> str:
    """The one-line reason given to the central for a job whose flow run is over or gone."""
    if flow_run is None:
        return "its flow run was deleted in Prefect"
    state = flow_run.state
    if state is None or state.type == StateType.CANCELLED:
        return f"its flow run {flow_run.name} was cancelled in Prefect"
    reason = f"its flow run {flow_run.name} ended {state.name} in Prefect"
    return f"{reason}: {state.message}" if state.message else reason


async def _read_runs(client: PrefectClient, flow_run_filter: FlowRunFilter) -> list[FlowRun]:
    runs: list[FlowRun] = []
    while True:
        page = await client.read_flow_runs(flow_run_filter=flow_run_filter, sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                                           limit=PAGE, offset=len(runs))
        runs.extend(page)
        if len(page) < PAGE:
            return runs


async def active_runs(client: PrefectClient, compute_resource_id: str) -> dict[str, FlowRun]:
    """The compute resource's flow runs that have not ended, by job id."""
    runs = await _read_runs(client, FlowRunFilter(
        tags=FlowRunFilterTags(all_=[resource_tag(compute_resource_id)]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=UNFINISHED_RUN_STATES)),
    ))
    return {job_id_of(run): run for run in runs}


async def latest_runs(client: PrefectClient, job_ids: list[str]) -> dict[str, FlowRun]:
    """The newest flow run of each of these jobs (jobs without one are absent)."""
    latest: dict[str, FlowRun] = {}
    for start in range(0, len(job_ids), PAGE):
        tags = [job_tag(job_id) for job_id in job_ids[start:start + PAGE]]
        for run in await _read_runs(client, FlowRunFilter(tags=FlowRunFilterTags(any_=tags))):
            latest[job_id_of(run)] = run  # sorted oldest first: the last one wins
    return latest


async def requeue_crashed(client: PrefectClient, flow_run: FlowRun) -> bool:
    """Send a pending job's run that crashed before its launch back to the queue, unless it crashed
    too often; True when it was requeued. (Called for pending jobs only: our workers set a job
    `starting` before launching it, so its infrastructure cannot exist.)"""
    if flow_run.state is None or flow_run.state.type != StateType.CRASHED:
        return False
    crashes = sum(state.type == StateType.CRASHED for state in await client.read_flow_run_states(flow_run.id))
    if crashes > MAX_REQUEUES:
        return False
    await client.set_flow_run_state(flow_run.id, Scheduled(message=f"Requeued after a crash before its launch "
                                                                     f"({crashes} of {MAX_REQUEUES})"), force=True)
    return True


async def ever_had_a_flow_run(client: PrefectClient, job_id: str) -> bool:
    """Whether Prefect's events name a flow run of the job (each state change of a run is an event related to
    its tags): a deleted run leaves them, a job this Prefect never ran has none."""
    page = await client.read_events(EventFilter(event=EventNameFilter(prefix=["prefect.flow-run."]),
                                                related=EventRelatedFilter(id=[f"prefect.tag.{job_tag(job_id)}"])),
                                    limit=1)
    return page.total > 0


@dataclass
class Actions:
    """What one reconciliation decided: runs to cancel and jobs to fail, each with its reason, and the
    jobs newly found running outside Prefect (to say so once)."""

    cancel: list[tuple[FlowRun, str]] = field(default_factory=list)
    fail: list[tuple[DendroJob, str]] = field(default_factory=list)
    outside: list[DendroJob] = field(default_factory=list)


@dataclass
class Reconciler:
    compute_resource_id: str
    settle_sec: float = SETTLE_SEC
    clock: Callable[[], float] = time.monotonic
    outside: set[str] = field(default_factory=set)  # launched jobs this Prefect never had a run of
    _first_seen: dict[tuple[str, str], float] = field(default_factory=dict)
    _had_a_run: set[str] = field(default_factory=set)

    def _settled(self, seen: set, job_id: str, what: str) -> bool:
        """True once this disagreement has lasted `settle_sec` (it is remembered from now on)."""
        key = (job_id, what)
        seen.add(key)
        return self.clock() - self._first_seen.setdefault(key, self.clock()) >= self.settle_sec

    async def decide(self, client: PrefectClient, unfinished_ids: set[str], jobs: list[DendroJob],
                     active: dict[str, FlowRun]) -> Actions:
        """Compare the central's unfinished jobs (`unfinished_ids`, parsed `jobs`) with the active runs."""
        actions = Actions()
        seen: set = set()
        for job_id, run in active.items():
            if job_id in unfinished_ids or run.state is None or run.state.type == StateType.CANCELLING:
                continue
            if run.state.type == StateType.SCHEDULED or self._settled(seen, job_id, "gone"):
                actions.cancel.append((run, f"job {job_id} is no longer unfinished at the central"))
        launched = [job for job in jobs if job.status in ("starting", "running") and job.jobId not in active]
        ended = await latest_runs(client, [job.jobId for job in launched]) if launched else {}
        self.outside &= {job.jobId for job in launched}
        self._had_a_run &= {job.jobId for job in launched}
        for job in launched:
            if job.jobId in self.outside:
                continue
            if job.jobId not in ended and job.jobId not in self._had_a_run:
                if not await ever_had_a_flow_run(client, job.jobId):
                    self.outside.add(job.jobId)
                    actions.outside.append(job)
                    continue
                self._had_a_run.add(job.jobId)
            if self._settled(seen, job.jobId, "ended"):
                actions.fail.append((job, why_run_ended(ended.get(job.jobId))))
        self._first_seen = {key: since for key, since in self._first_seen.items() if key in seen}
        return actions

    @staticmethod
    async def cancel(client: PrefectClient, flow_run: FlowRun, reason: str) -> None:
        """Cancelling, which the worker that follows the run acts on; a run no worker has taken (Scheduled,
        nothing launched) is Cancelled at once, as Prefect's own rule for it would (the force, which lets
        the controller cancel from any state, bypasses that rule): nobody would ever end its Cancelling."""
        message = f"Cancelled by the controller: {reason}"
        untaken = flow_run.state is not None and flow_run.state.type == StateType.SCHEDULED and not flow_run.infrastructure_pid
        await client.set_flow_run_state(flow_run.id, Cancelled(message=message) if untaken else Cancelling(message=message),
                                        force=True)
