"""Event-driven pickup: a worker hears of a flow run scheduled in its pool the moment Prefect schedules
it, from Prefect's event stream, instead of at its next query (every PREFECT_WORKER_QUERY_SECONDS,
10 s by default); and of a run of its pool that ended, which frees a slot of the pool's concurrency
limit for a run waiting behind it. The query loop stays as it is: the fallback while the stream is down.

Events only wake the worker; what it submits still comes from its usual query of the pool, so a
duplicated, late or replayed event costs one query and never a second submission. Wake-ups that
arrive while a query runs are folded into one more query after it.

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

WAKING_EVENTS = [f"prefect.flow-run.{state}" for state in ("Scheduled", "Completed", "Failed", "Cancelled", "Crashed")]
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
    def __init__(self, work_pool_id: UUID, pick_up: Callable[[], Awaitable[object]], logger: logging.Logger) -> None:
        self._filter = EventFilter(
            event=EventNameFilter(name=WAKING_EVENTS),
            any_resource=EventAnyResourceFilter(id=[f"prefect.work-pool.{work_pool_id}"]),
        )
        self._pick_up = pick_up
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
                    async for _ in subscriber:
                        self._wake.set()
            except Exception as error:
                if not lost:
                    self._logger.warning("Prefect's event stream is unavailable (%s: %s); flow runs are picked up at the "
                                         "worker's queries until it is back", type(error).__name__, error)
                    lost = True
            await anyio.sleep(RESUBSCRIBE_SEC)

    async def _pick_up_on_wake(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self._pick_up()
            except Exception as error:  # the query loop retries; the worker must not stop for this
                self._logger.warning("Pickup of newly scheduled flow runs failed: %s: %s", type(error).__name__, error)
