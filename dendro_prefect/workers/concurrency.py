"""Per-app (and per-project, per-processor) limits: Prefect's tag concurrency limits, applied to jobs.

A job's flow run carries the tags `app:<app>`, `processor:<name>` and `project:<id>`. An admin limits an
app with Prefect's own command, `prefect concurrency-limit create app:<app> 2` (stored as the global
concurrency limit `tag:app:<app>`). Prefect's server applies tag limits to task runs only, so the
worker takes one slot of every such limit before it launches a job and holds it, under a lease it
renews, until the job ends: a worker that dies loses its slots when the lease expires. A job whose
limit is full goes back to the queue as `AwaitingConcurrencySlot`, as Prefect does for deployment
limits; the pool's own limit (`prefect work-pool set-concurrency-limit`) Prefect enforces itself.
"""

from __future__ import annotations

import contextlib
import time
from typing import AsyncIterator, Callable
from uuid import UUID

import anyio
import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import ConcurrencyLeaseHolder, FlowRun

TAG_LIMIT_PREFIX = "tag:"
LEASE_SEC = 300.0
RENEW_EVERY_SEC = 60.0
LIMITS_MAX_AGE_SEC = 5.0
LIMITS_PAGE = 200


class SlotsTaken(Exception):
    """A tag limit of the job is full; try again after `retry_after` seconds."""

    def __init__(self, names: list[str], retry_after: float) -> None:
        super().__init__(f"concurrency limit {', '.join(n.removeprefix(TAG_LIMIT_PREFIX) for n in names)} is full")
        self.retry_after = retry_after


class TagSlots:
    """The tag limits of a worker's Prefect server, read at most every few seconds, and their slots."""

    def __init__(self, client: PrefectClient, clock: Callable[[], float] = time.monotonic) -> None:
        """`clock` (monotonic seconds) says when the limits were read; tests move it instead of waiting."""
        self._client = client
        self._clock = clock
        self._active: set[str] = set()
        self._read_at = float("-inf")
        self._reading = anyio.Lock()  # the runs a query hands out arrive at once: one read for them all

    async def _limit_names(self, tags: list[str]) -> list[str]:
        if self._clock() - self._read_at > LIMITS_MAX_AGE_SEC:
            async with self._reading:
                if self._clock() - self._read_at > LIMITS_MAX_AGE_SEC:  # not read while this waited
                    await self._read_limits()
        return sorted(name for name in (TAG_LIMIT_PREFIX + tag for tag in tags) if name in self._active)

    async def _read_limits(self) -> None:
        names: set[str] = set()
        offset = 0  # by the limits read, not the active ones kept: a page of inactive ones would be read forever
        while True:
            page = await self._client.read_global_concurrency_limits(limit=LIMITS_PAGE, offset=offset)
            names.update(limit.name for limit in page if limit.active)
            offset += len(page)
            if len(page) < LIMITS_PAGE:
                break
        self._active = {name for name in names if name.startswith(TAG_LIMIT_PREFIX)}
        self._read_at = self._clock()

    async def acquire(self, flow_run: FlowRun, wait: bool = True) -> UUID | None:
        """A lease on one slot of each limit of the run's tags (None when no tag is limited).
        Raises SlotsTaken when one is full, unless `wait` is False (a job that runs already):
        then it runs without a slot."""
        names = await self._limit_names(flow_run.tags or [])
        if not names:
            return None
        try:
            response = await self._client.increment_concurrency_slots_with_lease(
                names=names, slots=1, mode="concurrency", lease_duration=LEASE_SEC,
                holder=ConcurrencyLeaseHolder(type="flow_run", id=flow_run.id),
            )
        except httpx.HTTPError as error:
            if not wait:
                return None
            if not isinstance(error, httpx.HTTPStatusError) or error.response.status_code not in (422, 423):
                raise
            # 423: full; 422: a limit of 0, which pauses the app
            raise SlotsTaken(names, float(error.response.headers.get("Retry-After", 10))) from None
        return UUID(response.json()["lease_id"])

    @contextlib.asynccontextmanager
    async def held(self, lease_id: UUID | None) -> AsyncIterator[None]:
        """Keep the lease alive while the job runs; give the slots back when it ends."""
        if lease_id is None:
            yield
            return
        async with anyio.create_task_group() as group:
            group.start_soon(self._renew, lease_id)
            try:
                yield
            finally:
                group.cancel_scope.cancel()
                with anyio.CancelScope(shield=True), contextlib.suppress(httpx.HTTPError):
                    await self._client.release_concurrency_slots_with_lease(lease_id)

    async def _renew(self, lease_id: UUID) -> None:
        while True:
            await anyio.sleep(RENEW_EVERY_SEC)
            with contextlib.suppress(httpx.HTTPError):
                await self._client.renew_concurrency_lease(lease_id, LEASE_SEC)
