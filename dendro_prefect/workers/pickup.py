"""Event-driven pickup: a worker hears of a flow run scheduled in its pool the moment Prefect schedules
it, from Prefect's event stream, instead of at its next query (every PREFECT_WORKER_QUERY_SECONDS,
10 s by default); and of a run of its pool that ended, which frees a slot of the pool's concurrency
limit for a run waiting behind it. The query loop stays as it is: the fallback while the stream is down.

Events only wake the worker; what it submits still comes from its usual query of the pool, so a
duplicated, late or replayed event costs one query and never a second submission. Wake-ups that
arrive while a query runs are folded into one more query after it.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable
from uuid import UUID

import anyio
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter

WAKING_EVENTS = [f"prefect.flow-run.{state}" for state in ("Scheduled", "Completed", "Failed", "Cancelled", "Crashed")]
RESUBSCRIBE_SEC = 5.0  # after the stream is lost; the query loop carries on meanwhile


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
