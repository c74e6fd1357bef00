"""The controller's loop: on every PubSub hint or poll interval, turn each pending Dendro job into
exactly one flow run; fail at the central, with a one-line reason, every job that cannot run.

Idempotency comes from Prefect: the flow run's idempotency key is the job id, so a job announced
twice, polled again or seen by a restarted controller still has one flow run.
"""

from __future__ import annotations

import logging
import time

import anyio
from prefect.deployments import arun_deployment
from prefect.exceptions import ObjectNotFound

from ..apps import AppCatalog, AppSpecError
from ..config import ComputeResourceConfig
from ..protocol.client import CentralClient, CentralError
from ..protocol.models import (
    AppsChangedMessage,
    ComputeResourceSpec,
    DendroJob,
    ProtocolError,
    parse,
)
from ..pubsub import JobHints
from .routing import FlowRunPlan, RoutingError, plan_flow_run

# Flow runs created at once: enough to hide the server's latency, few enough for SQLite.
SUBMIT_CONCURRENCY = 4


class Controller:
    def __init__(self, config: ComputeResourceConfig, deployments: dict[str, str], logger: logging.Logger | logging.LoggerAdapter) -> None:
        self.config = config
        self.deployments = deployments
        self.logger = logger
        self.client = CentralClient(config.central_url, config.compute_resource_id, config.private_key)
        self.catalog = AppCatalog()
        self.flow_runs: dict[str, str] = {}  # job id -> flow run id, for jobs this controller submitted

    async def load_apps(self) -> None:
        """Load the apps' specs and report them to the central, as the original daemon does."""
        apps = await anyio.to_thread.run_sync(self.client.get_apps)
        self.catalog = await anyio.to_thread.run_sync(AppCatalog.load, apps)
        for name, reason in self.catalog.errors.items():
            self.logger.error("App %s skipped: %s", name, reason)
        spec = ComputeResourceSpec(
            apps=[app.spec for app in self.catalog.apps],
            defaultJobRunMethod=self.config.default_job_run_method,
            availableJobRunMethods=self.config.available_job_run_methods,
        )
        await anyio.to_thread.run_sync(self.client.put_spec, spec)
        self.logger.info("Loaded %d app(s): %s", len(self.catalog.apps), ", ".join(a.name for a in self.catalog.apps) or "none")

    async def intake(self) -> int:
        """Submit every pending job that has no flow run yet, a few at a time; return how many."""
        documents = await anyio.to_thread.run_sync(self.client.get_unfinished_jobs)
        jobs = [job for job in [await self._parse(d) for d in documents]
                if job is not None and job.status == "pending" and job.jobId not in self.flow_runs]
        submitted = 0
        limiter = anyio.CapacityLimiter(SUBMIT_CONCURRENCY)

        async def take(job: DendroJob) -> None:
            nonlocal submitted
            async with limiter:
                try:
                    app = self.catalog.for_processor(job.processorName)
                    await self._submit(job, plan_flow_run(job, app, self.deployments))
                    submitted += 1
                except (AppSpecError, RoutingError) as error:
                    await self._fail(job.jobId, job.jobPrivateKey, str(error))

        async with anyio.create_task_group() as group:
            for job in jobs:
                group.start_soon(take, job)
        return submitted

    async def _parse(self, document: object) -> DendroJob | None:
        try:
            return parse(DendroJob, document, "job")
        except ProtocolError as error:
            job_id = document.get("jobId") if isinstance(document, dict) else None
            key = document.get("jobPrivateKey") if isinstance(document, dict) else None
            if isinstance(job_id, str) and isinstance(key, str):
                await self._fail(job_id, key, str(error))
            else:
                self.logger.error("Unusable job from the central: %s", error)
            return None

    async def _submit(self, job: DendroJob, plan: FlowRunPlan) -> None:
        try:
            flow_run = await arun_deployment(
                plan.deployment, parameters=plan.parameters, job_variables=plan.job_variables,
                flow_run_name=plan.name, tags=plan.tags, idempotency_key=job.jobId, timeout=0, as_subflow=False,
            )
        except ObjectNotFound:
            raise RoutingError(f"no deployment {plan.deployment} for runMethod {job.runMethod}") from None
        self.flow_runs[job.jobId] = str(flow_run.id)
        self.logger.info("Job %s → flow run %s (%s)", job.jobId, flow_run.name, plan.deployment)

    async def _fail(self, job_id: str, job_private_key: str, reason: str) -> None:
        self.logger.error("Job %s failed: %s", job_id, reason)
        try:
            await anyio.to_thread.run_sync(self.client.set_job_status, job_id, job_private_key, "failed", reason)
        except CentralError as error:
            self.logger.warning("Could not fail job %s at the central: %s", job_id, error)
        self.flow_runs[job_id] = ""

    async def run(self, poll_interval_sec: float, run_for_sec: float | None = None) -> None:
        """Run until cancelled (or for `run_for_sec`): hints and polls drive intake. It subscribes
        before it reports the apps' spec, so a job created once the spec is reported is heard."""
        subscription = await anyio.to_thread.run_sync(self.client.get_pubsub_subscription)
        hints = JobHints(subscription, self.config.compute_resource_id, self.logger)
        hints.start()
        await self.load_apps()
        deadline = None if run_for_sec is None else time.monotonic() + run_for_sec
        try:
            while deadline is None or time.monotonic() < deadline:
                try:
                    await self.intake()
                except CentralError as error:
                    self.logger.warning("Central unreachable, will retry: %s", error)
                messages = await hints.wait(poll_interval_sec)
                if any(isinstance(m, AppsChangedMessage) for m in messages):
                    await self.load_apps()
        finally:
            hints.stop()
