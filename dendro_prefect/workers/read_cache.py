"""Deployments and flows read once every few seconds for all the runs that ask, not three times per run.

Prefect's worker reads each run's deployment twice (whether it still exists; its job variables) and
its flow once on the launch's path. A pool's runs share a few deployments, so these reads are answered
from memory: three round trips less per launch. A deployment edited or deleted is seen within `ttl_sec`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Awaitable, Callable

import anyio
from prefect.client.orchestration import PrefectClient

CACHED_READS = ("read_deployment", "read_flow")


def cache_reads(client: PrefectClient, ttl_sec: float = 5.0) -> None:
    """Make `client`'s deployment and flow reads answer from memory for `ttl_sec`."""
    for name in CACHED_READS:
        setattr(client, name, _remembered(getattr(client, name), ttl_sec))


def _remembered(read: Callable[[Any], Awaitable[Any]], ttl_sec: float) -> Callable[[Any], Awaitable[Any]]:
    """The runs a query hands out are submitted at once: the first to find an object stale reads it while the
    others wait for that read instead of each making its own (a read that fails or is cancelled leaves the
    object stale, and the next one reads it)."""
    remembered: dict[Any, tuple[float, Any]] = {}
    reading: dict[Any, anyio.Lock] = defaultdict(anyio.Lock)

    def fresh(object_id: Any) -> bool:
        return time.monotonic() - remembered.get(object_id, (float("-inf"), None))[0] < ttl_sec

    async def read_or_remember(object_id: Any) -> Any:
        if not fresh(object_id):
            async with reading[object_id]:
                if not fresh(object_id):  # not read by another caller while this one waited
                    value = await read(object_id)
                    remembered[object_id] = (time.monotonic(), value)
        # A copy: Prefect merges a run's job variables into the deployment's it was given.
        return remembered[object_id][1].model_copy(deep=True)

    return read_or_remember
