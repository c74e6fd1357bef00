"""The Dendro central as a worker sees it, for either protocol: the configuration, its client, and the jobs
that have not ended, read once for everyone who asks within a short while (many launches and the watch share
one call). Everything a job's life needs of its protocol is here; the rest of the worker is the same for both.

- Dendro 0.2 (`ComputeResourceJobs`): the compute resource's unfinished jobs, one signed call.
- Dendro 0.6 (`ComputeClientJobs`): the service's runnable jobs offered to this compute client and the jobs it
  has claimed, one call. The service offers a pending job only while a compute slot of the client is free, so a
  job not in that answer is asked for alone (by its id, which the service answers whatever the slots).
"""

from __future__ import annotations

import abc
import asyncio
import time
from typing import Any

import anyio

from .config import ComputeClientConfig, ComputeResourceConfig, SiteConfig, read_config
from .protocol.client import CentralClient
from .protocol.models import DendroJob, ProtocolError, parse
from .protocol.transport import ClaimRefused
from .protocol.v06.client import ServiceClient
from .protocol.v06.models import ServiceJob

Job = DendroJob | ServiceJob  # a job as its protocol has it; the fields a worker uses are named alike
Client = CentralClient | ServiceClient  # set_job_status / get_job_status alike


class JobRefused(Exception):
    """The job cannot be launched; the message is the one-line reason given to the central."""


class CentralJobs(abc.ABC):
    job_model: type[Job]

    def __init__(self, config: SiteConfig, client: Client, max_age_sec: float = 0.5) -> None:
        self.config = config
        self.client = client
        self.max_age_sec = max_age_sec
        self._documents: dict[str, dict] = {}
        self._read_documents: list[Any] = []
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()

    @abc.abstractmethod
    def _read(self) -> list[Any]:
        """The documents of the jobs that have not ended, from one call to the central (blocking)."""

    async def missing(self, job_id: str) -> dict | None:
        """The document of an unfinished job the shared read did not have, asked for alone, or None (0.2's read
        has every unfinished job: nothing to ask)."""
        return None

    def held_by_another(self, document: dict) -> str | None:
        """Who else holds the job (a 0.6 service's other compute client), or None."""
        return None

    @abc.abstractmethod
    def sdk_variables(self, app_executable: str) -> dict[str, str]:
        """What the protocol's SDK reads in a job beside its id and time limit (the executable, the central)."""

    def app_argv(self, app_executable: str) -> list[str]:
        """The app's command line: its executable, as dendro 0.2's compute resource runs it."""
        return [app_executable]

    def environment(self, job: Job, app_executable: str, time_limit_sec: float | None) -> dict[str, str]:
        """The environment the protocol's SDK expects in a job, less the job's private key."""
        env = {"PYTHONUNBUFFERED": "1", "JOB_ID": job.jobId, **self.sdk_variables(app_executable)}
        if time_limit_sec is not None:
            env["JOB_TIMEOUT_SEC"] = str(int(time_limit_sec))
        return env

    async def unfinished(self, newer_than: float) -> dict[str, dict]:
        """The unfinished jobs by id, as read at `newer_than` (a monotonic time) or later."""
        async with self._lock:
            if self._read_at < newer_than:
                started = time.monotonic()
                self._read_documents = await anyio.to_thread.run_sync(self._read)
                self._documents = {d["jobId"]: d for d in self._read_documents
                                   if isinstance(d, dict) and isinstance(d.get("jobId"), str)}
                self._read_at = started
            return self._documents

    def documents(self) -> dict[str, dict]:
        """The last shared read, by job id (no call)."""
        return self._documents

    def read_documents(self) -> list[Any]:
        """The last shared read as the central answered it, documents without a usable id too (no call)."""
        return self._read_documents

    async def unfinished_job(self, job_id: str, newer_than: float) -> dict | None:
        """The job's document if it has not ended (read at `newer_than` or later), else None."""
        document = (await self.unfinished(newer_than)).get(job_id)
        return document if document is not None else await self.missing(job_id)

    async def statuses(self, job_ids: list[str]) -> dict[str, str | None]:
        unfinished = await self.unfinished(time.monotonic())
        return {job_id: (unfinished.get(job_id) or await self.missing(job_id) or {}).get("status")
                for job_id in job_ids}

    async def job(self, job_id: str, statuses: tuple[str, ...] = ("pending",)) -> Job:
        """The job as the central has it now (a read shared with launches that ask at the same time)."""
        document = (await self.unfinished(time.monotonic() - self.max_age_sec)).get(job_id)
        if document is None:  # newer than the shared read, perhaps
            document = await self.unfinished_job(job_id, time.monotonic())
        if document is None:
            raise JobRefused(f"job {job_id} is not unfinished at the central (finished or deleted)")
        try:
            job = parse(self.job_model, document, f"job {job_id}")
        except ProtocolError as error:
            raise JobRefused(str(error)) from None
        if (holder := self.held_by_another(document)) is not None:
            raise ClaimRefused(f"job {job_id} was claimed by {holder} first")
        if job.status not in statuses:
            raise JobRefused(f"job {job_id} is {job.status}, not {' or '.join(statuses)}")
        if not job.jobPrivateKey:
            raise JobRefused(f"job {job_id} came without its private key")
        return job


class ComputeResourceJobs(CentralJobs):
    """Dendro 0.2: the compute resource's unfinished jobs."""

    job_model = DendroJob

    def __init__(self, config: ComputeResourceConfig, max_age_sec: float = 0.5) -> None:
        super().__init__(config, CentralClient(config.central_url, config.compute_resource_id, config.private_key),
                         max_age_sec)

    def _read(self) -> list[Any]:
        return self.client.get_unfinished_jobs()

    def sdk_variables(self, app_executable: str) -> dict[str, str]:
        """As dendro 0.2.17's compute resource gives them."""
        return {"APP_EXECUTABLE": app_executable, "DENDRO_URL": self.config.central_url}


class ComputeClientJobs(CentralJobs):
    """Dendro 0.6: the jobs a service offers this compute client, and those it has claimed."""

    job_model = ServiceJob

    def __init__(self, config: ComputeClientConfig, max_age_sec: float = 0.5) -> None:
        super().__init__(config, ServiceClient(config.central_url, config.compute_client_id, config.private_key),
                         max_age_sec)

    def _read(self) -> list[Any]:
        runnable, running = self.client.runnable_jobs()
        return [*runnable, *running]

    async def missing(self, job_id: str) -> dict | None:
        return await anyio.to_thread.run_sync(self._ask_for, job_id)

    def _ask_for(self, job_id: str) -> dict | None:
        """The job's public document if it has not ended; for a pending one the slots left out, the document with
        its key, which the service offers when asked by the job's id. One call for a job that ended (what the
        watch asks about), two for a pending one."""
        document = self.client.job(job_id)
        if document is None or document.get("status") in ("completed", "failed"):
            return None
        if document.get("status") == "pending":
            runnable, _ = self.client.runnable_jobs(job_id)
            return next((d for d in runnable if isinstance(d, dict) and d.get("jobId") == job_id), document)
        return document

    def held_by_another(self, document: dict) -> str | None:
        holder = document.get("computeClientId")
        if holder and holder != self.config.compute_client_id:
            return f"compute client {document.get('computeClientName') or holder}"
        return None

    def app_argv(self, app_executable: str) -> list[str]:
        """A Python executable runs with the `python` of the job's PATH, as 0.6.22's compute client runs it."""
        return ["python", app_executable] if app_executable.endswith(".py") else [app_executable]

    def sdk_variables(self, app_executable: str) -> dict[str, str]:
        """As dendro 0.6.22's compute client gives them (`compute_client/_start_job.py`); the SDK's status calls
        must name the compute client that claimed the job."""
        return {"COMPUTE_CLIENT_ID": self.config.compute_client_id, "PROCESSOR_EXECUTABLE": app_executable,
                "DENDRO_API_URL": self.config.central_url}


def central_jobs_for(config_file: str | None) -> CentralJobs:
    """The central of the configuration file, in its protocol."""
    config = read_config(config_file or None)
    if isinstance(config, ComputeClientConfig):
        return ComputeClientJobs(config)
    return ComputeResourceJobs(config)
