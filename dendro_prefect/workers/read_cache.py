"""Deployments and flows read once every few seconds for all the runs that ask, not three times per run.

Prefect's worker reads each run's deployment twice (whether it still exists; its job variables) and
its flow once on the launch's path. A pool's runs share a few deployments, so these reads are answered
from memory: three round trips less per launch. A deployment edited or deleted is seen within `ttl_sec`.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

from prefect.client.orchestration import PrefectClient

CACHED_READS = ("read_deployment", "read_flow")


def cache_reads(client: PrefectClient, ttl_sec: float = 5.0) -> None:
    """Make `client`'s deployment and flow reads answer from memory for `ttl_sec`."""
    for name in CACHED_READS:
        setattr(client, name, _remembered(getattr(client, name), ttl_sec))


def _remembered(read: Callable[[Any], Awaitable[Any]], ttl_sec: float) -> Callable[[Any], Awaitable[Any]]:
    remembered: dict[Any, tuple[float, Any]] = {}

    async def read_or_remember(object_id: Any) -> Any:
        read_at, value = remembered.get(object_id, (float("-inf"), None))
        if time.monotonic() - read_at >= ttl_sec:
            read_at, value = time.monotonic(), await read(object_id)
            remembered[object_id] = (read_at, value)
        # A copy: Prefect merges a run's job variables into the deployment's it was given.
        return value.model_copy(deep=True)

    return read_or_remember
