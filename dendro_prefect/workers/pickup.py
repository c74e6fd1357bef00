"""Event-driven pickup: a worker hears of a flow run scheduled in its pool the moment Prefect schedules
it, from Prefect's event stream, instead of at its next query (every PREFECT_WORKER_QUERY_SECONDS,
10 s by default); and, when the pool has a concurrency limit, of a run of its pool that ended, which frees
a slot for a run waiting behind it (without a limit no run waits for one: a query then would find nothing
the last one did not). The query loop stays as it is: the fallback while the stream is down.

Events only wake the worker; what it submits still comes from its usual query of the pool, so a
duplicated, late or replayed event costs one query and never a second submission. Wake-ups that
arrive while a query runs are folded into one more query after it. A query hands out at most a page of
runs (PREFECT_API_DEFAULT_LIMIT, 200): one that handed out a full page queries again at once, so a
thousand runs created in bulk are picked up page after page, not a page per query interval.

Those queries and the loop's take turns (`OneQueryAtATime`): the pool's concurrency limit is only as
good as the count of Pending and Running runs each query makes.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable, Sequence
from uuid import UUID

import anyio
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter
from prefect.settings import PREFECT_API_DEFAULT_LIMIT

SCHEDULED_EVENT = "prefect.flow-run.Scheduled"
END_EVENTS = [f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled", "Crashed")]
RESUBSCRIBE_SEC = 5.0  # after the stream is lost; the query loop carries on meanwhile


class OneQueryAtATime:
    """A worker's queries of its pool, one at a time, each after the runs the last one handed out are
    settled: proposed Pending (or refused, or given up).

    Prefect's server enforces a pool's concurrency limit only in that query: it hands out as many
    Scheduled runs as the limit less the pool's Pending and Running runs. The worker proposes Pending
    afterwards, in a task per run, and while a proposal is in flight its run is still Scheduled and,
    on PostgreSQL, its row is locked: a query made then (the pickup's and the loop's come close
    together) counts the slot as free and, skipping the locked row (`FOR UPDATE SKIP LOCKED`), hands
    out the next run instead. So four jobs ran on a pool limited to two. Once every run handed out
    has settled, the next query counts them all. The cost: a run scheduled while a query runs waits
    for that query's Pending proposals (tens of milliseconds) before it is handed out."""

    def __init__(self) -> None:
        self._turn = anyio.Lock()
        self._settled: set[UUID] = set()  # since the current turn began
        self._changed = anyio.Event()

    async def query(self, query: Callable[[], Awaitable[Sequence]], in_flight: Callable[[], set]) -> Sequence:
        """Run `query` (it hands out runs and starts their submission) in its turn; `in_flight`: the
        ids of the runs being submitted, among which the ones this query hands out appear."""
        async with self._turn:
            self._settled.clear()  # every run of earlier turns has settled
            before = set(in_flight())
            runs = await query()
            handed_out = {run.id for run in runs} - before
            while not handed_out <= self._settled:
                self._changed = anyio.Event()
                await self._changed.wait()
            return runs

    def settled(self, run_id: UUID) -> None:
        """The run's Pending proposal is over, whatever its outcome (said again later is harmless)."""
        self._settled.add(run_id)
        self._changed.set()


class ScheduledRunPickup:
    def __init__(self, work_pool_id: UUID, pick_up: Callable[[], Awaitable[Sequence]], logger: logging.Logger,
                 pool_has_limit: Callable[[], bool]) -> None:
        self._filter = EventFilter(
            event=EventNameFilter(name=[SCHEDULED_EVENT, *END_EVENTS]),
            any_resource=EventAnyResourceFilter(id=[f"prefect.work-pool.{work_pool_id}"]),
        )
        self._pick_up = pick_up
        self._pool_has_limit = pool_has_limit  # asked per event: an admin may set or lift the limit any time
        self._logger = logger
        self._wake = anyio.Event()

    async def run(self) -> None:
        """Listen and pick up until cancelled (with the worker's task group)."""
        async with anyio.create_task_group() as group:
            group.start_soon(self._pick_up_on_wake)
            await self._listen()

    async def _listen(self) -> None:
        lost = False
        while True:
            try:
                async with get_events_subscriber(filter=self._filter, reconnection_attempts=0) as subscriber:
                    if lost:
                        self._logger.info("Prefect's event stream is back: flow runs are picked up as they are scheduled")
                        lost = False
                    async for event in subscriber:
                        if self.wakes(event.event):
                            self._wake.set()
            except Exception as error:
                if not lost:
                    self._logger.warning("Prefect's event stream is unavailable (%s: %s); flow runs are picked up at the "
                                         "worker's queries until it is back", type(error).__name__, error)
                    lost = True
            await anyio.sleep(RESUBSCRIBE_SEC)

    def wakes(self, event_name: str) -> bool:
        return event_name == SCHEDULED_EVENT or self._pool_has_limit()

    async def _pick_up_on_wake(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            try:
                if len(await self._pick_up()) >= PREFECT_API_DEFAULT_LIMIT.value():
                    self._wake.set()  # more may wait behind a full page
            except Exception as error:  # the query loop retries; the worker must not stop for this
                self._logger.warning("Pickup of newly scheduled flow runs failed: %s: %s", type(error).__name__, error)
