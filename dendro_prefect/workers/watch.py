"""One watch for all the jobs a worker runs: a round every poll interval asks each backend for
the state of all its jobs in one call, Prefect for all cancel requests in one call, and the central
for all job statuses in one call; each job's loop then reads its own observation.

This keeps the cost of watching flat as jobs grow, as Parsl's providers do with one `squeue`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Awaitable, Callable
from uuid import UUID

from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType

from .launch import InfrastructureState, Launcher

logger = logging.getLogger(__name__)

CentralStatuses = Callable[[list[str]], Awaitable[dict[str, str | None]]]
CancelRequests = Callable[[list[UUID]], Awaitable[set[UUID]]]


@dataclass(frozen=True)
class Observation:
    infrastructure: InfrastructureState | None  # None: the backend could not be asked this round
    cancel_requested: bool
    central_status: str | None  # None: no longer unfinished at the central (finished or deleted)
    central_known: bool  # False until the central has been asked once (or while it is unreachable)


@dataclass
class WatchedJob:
    flow_run_id: UUID
    job_id: str
    infrastructure_id: str
    launcher: Launcher
    statuses: CentralStatuses
    observation: Observation | None = None
    updated: asyncio.Event = field(default_factory=asyncio.Event)

    async def next_observation(self) -> Observation:
        await self.updated.wait()
        self.updated.clear()
        assert self.observation is not None
        return self.observation


class Watch:
    def __init__(self, cancel_requests: CancelRequests, interval: float, central_interval: float) -> None:
        self._cancel_requests = cancel_requests
        self.interval = interval
        self.central_interval = central_interval
        self._jobs: dict[UUID, WatchedJob] = {}
        self._task: asyncio.Task | None = None
        self._central: dict[str, str | None] = {}
        self._central_asked: set[str] = set()
        self._central_at = float("-inf")  # asked at once, however short the host's uptime

    def add(self, job: WatchedJob) -> None:
        self._jobs[job.flow_run_id] = job
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._rounds())

    def remove(self, job: WatchedJob) -> None:
        self._jobs.pop(job.flow_run_id, None)
        self._central.pop(job.job_id, None)
        self._central_asked.discard(job.job_id)

    async def _rounds(self) -> None:
        while self._jobs:
            started = time.monotonic()
            try:
                await self._round(list(self._jobs.values()))
            except Exception:  # a failed round must not end the watch of every job
                logger.exception("watch round failed")
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def _round(self, jobs: list[WatchedJob]) -> None:
        by_launcher: dict[Launcher, list[WatchedJob]] = defaultdict(list)
        for job in jobs:
            by_launcher[job.launcher].append(job)
        states: dict[str, InfrastructureState] = {}
        for launcher, group in by_launcher.items():
            try:
                states.update(await launcher.states([j.infrastructure_id for j in group]))
            except Exception as error:
                logger.warning("cannot read job states from %s: %s", type(launcher).__name__, error)
        try:
            cancelling = await self._cancel_requests([j.flow_run_id for j in jobs])
        except Exception as error:
            logger.warning("cannot read cancel requests from Prefect: %s", error)
            cancelling = set()
        if time.monotonic() - self._central_at >= self.central_interval:
            await self._ask_central(jobs)
        for job in jobs:
            job.observation = Observation(
                infrastructure=states.get(job.infrastructure_id),
                cancel_requested=job.flow_run_id in cancelling,
                central_status=self._central.get(job.job_id),
                central_known=job.job_id in self._central_asked,
            )
            job.updated.set()

    async def _ask_central(self, jobs: list[WatchedJob]) -> None:
        by_source: dict[CentralStatuses, list[str]] = defaultdict(list)
        for job in jobs:
            by_source[job.statuses].append(job.job_id)
        for statuses, job_ids in by_source.items():
            try:
                self._central.update(await statuses(job_ids))
            except Exception as error:
                logger.warning("cannot read job statuses from the central: %s", error)
                continue
            self._central_asked.update(job_ids)
        self._central_at = time.monotonic()


RUNS_PAGE = 200  # flow runs the API serves in one call


async def cancel_requests(client, flow_run_ids: list[UUID]) -> set[UUID]:
    """The watched runs that were cancelled in Prefect (Cancelling, Cancelled), a page of runs per call."""
    cancelled = set()
    for start in range(0, len(flow_run_ids), RUNS_PAGE):
        page = flow_run_ids[start:start + RUNS_PAGE]
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=page), state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.CANCELLING, StateType.CANCELLED]))),
            limit=RUNS_PAGE)
        cancelled.update(run.id for run in runs)
    return cancelled
