"""Deployments and flows read once every few seconds for all the runs that ask, not three times per run.

Prefect's worker reads each run's deployment twice (whether it still exists; its job variables) and
its flow once on the launch's path. A pool's runs share a few deployments, so these reads are answered
from memory: three round trips less per launch. A deployment edited or deleted is seen within `ttl_sec`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from prefect.client.orchestration import PrefectClient

CACHED_READS = ("read_deployment", "read_flow")


def cache_reads(client: PrefectClient, ttl_sec: float = 5.0) -> None:
    """Make `client`'s deployment and flow reads answer from memory for `ttl_sec`."""
    for name in CACHED_READS:
        setattr(client, name, _remembered(getattr(client, name), ttl_sec))


def _remembered(read: Callable[[Any], Awaitable[Any]], ttl_sec: float) -> Callable[[Any], Awaitable[Any]]:
    """The runs a query hands out are submitted at once: they share one read in flight (a read that fails
    is forgotten, so the next caller reads again) rather than each making its own."""
    remembered: dict[Any, tuple[float, asyncio.Future]] = {}

    async def read_or_remember(object_id: Any) -> Any:
        read_at, reading = remembered.get(object_id, (float("-inf"), None))
        if reading is None or time.monotonic() - read_at >= ttl_sec:
            read_at, reading = time.monotonic(), asyncio.ensure_future(read(object_id))
            remembered[object_id] = (read_at, reading)
        try:
            value = await asyncio.shield(reading)  # one caller cancelled does not cancel the others' read
        except Exception:
            if remembered.get(object_id, (None, None))[1] is reading:
                del remembered[object_id]
            raise
        # A copy: Prefect merges a run's job variables into the deployment's it was given.
        return value.model_copy(deep=True)

    return read_or_remember
