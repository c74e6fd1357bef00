"""The Dendro central service as a worker sees it: the compute resource's configuration, its client, and
the resource's unfinished jobs, read once for everyone who asks within a short while (many launches and
the watch share one call)."""

from __future__ import annotations

import asyncio
import time

import anyio

from ..config import ComputeResourceConfig
from ..protocol.client import CentralClient
from ..protocol.models import DendroJob, ProtocolError, parse


class JobRefused(Exception):
    """The job cannot be launched; the message is the one-line reason given to the central."""


class CentralJobs:
    def __init__(self, config: ComputeResourceConfig, max_age_sec: float = 0.5) -> None:
        self.config = config
        self.client = CentralClient(config.central_url, config.compute_resource_id, config.private_key)
        self.max_age_sec = max_age_sec
        self._documents: dict[str, dict] = {}
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()

    async def unfinished(self, newer_than: float) -> dict[str, dict]:
        """The unfinished jobs by id, as read at `newer_than` (a monotonic time) or later."""
        async with self._lock:
            if self._read_at < newer_than:
                started = time.monotonic()
                documents = await anyio.to_thread.run_sync(self.client.get_unfinished_jobs)
                self._documents = {d["jobId"]: d for d in documents if isinstance(d, dict) and "jobId" in d}
                self._read_at = started
            return self._documents

    async def statuses(self, job_ids: list[str]) -> dict[str, str | None]:
        unfinished = await self.unfinished(time.monotonic())
        return {job_id: unfinished.get(job_id, {}).get("status") for job_id in job_ids}

    async def job(self, job_id: str, statuses: tuple[str, ...] = ("pending",)) -> DendroJob:
        """The job as the central has it now (a read shared with launches that ask at the same time)."""
        document = (await self.unfinished(time.monotonic() - self.max_age_sec)).get(job_id)
        if document is None:  # newer than the shared read, perhaps
            document = (await self.unfinished(time.monotonic())).get(job_id)
        if document is None:
            raise JobRefused(f"job {job_id} is not unfinished at the central (finished or deleted)")
        try:
            job = parse(DendroJob, document, f"job {job_id}")
        except ProtocolError as error:
            raise JobRefused(str(error)) from None
        if job.status not in statuses:
            raise JobRefused(f"job {job_id} is {job.status}, not {' or '.join(statuses)}")
        return job
