"""The controller's loop: on every PubSub hint or poll interval, turn each pending Dendro job into
exactly one flow run; fail at the central, with a one-line reason, every job that cannot run.

Idempotency comes from Prefect: the flow run's idempotency key is the job id (unique per flow, and all
job deployments share the `dendro-job` flow), so a job announced twice, polled again or seen by a
restarted controller still has one flow run.
"""

from __future__ import annotations

import logging
import time
from uuid import UUID

import anyio
from prefect.client.orchestration import PrefectClient, get_client
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


class Controller:
    def __init__(self, config: ComputeResourceConfig, deployments: dict[str, str],
                 logger: logging.Logger | logging.LoggerAdapter, submit_concurrency: int = 1) -> None:
        self.config = config
        self.deployments = deployments
        self.logger = logger
        self.client = CentralClient(config.central_url, config.compute_resource_id, config.private_key)
        self.catalog = AppCatalog()
        self.flow_runs: dict[str, str] = {}  # job id -> flow run id, for jobs this controller submitted
        # Flow runs created at once: 1 suits SQLite (concurrent writers wait on its lock); more pays
        # off on PostgreSQL.
        self.submit_concurrency = submit_concurrency

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
        fresh = [d for d in documents if not (isinstance(d, dict) and d.get("jobId") in self.flow_runs)]
        jobs = [job for job in [await self._parse(d) for d in fresh] if job is not None and job.status == "pending"]
        submitted = 0
        limiter = anyio.CapacityLimiter(self.submit_concurrency)
        deployment_ids: dict[str, UUID] = {}

        async def take(client: PrefectClient, job: DendroJob) -> None:
            nonlocal submitted
            async with limiter:
                try:
                    app = self.catalog.for_processor(job.processorName)
                    await self._submit(client, job, plan_flow_run(job, app, self.deployments), deployment_ids)
                    submitted += 1
                except (AppSpecError, RoutingError) as error:
                    await self._fail(job.jobId, job.jobPrivateKey, str(error))

        if jobs:
            async with get_client() as client, anyio.create_task_group() as group:
                for job in jobs:
                    group.start_soon(take, client, job)
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

    async def _submit(self, client: PrefectClient, job: DendroJob, plan: FlowRunPlan,
                      deployment_ids: dict[str, UUID]) -> None:
        """Create the job's flow run, as `run_deployment(timeout=0)` does, on one shared client."""
        try:
            if plan.deployment not in deployment_ids:
                deployment_ids[plan.deployment] = (await client.read_deployment_by_name(plan.deployment)).id
        except ObjectNotFound:
            raise RoutingError(f"no deployment {plan.deployment} for runMethod {job.runMethod}") from None
        flow_run = await client.create_flow_run_from_deployment(
            deployment_ids[plan.deployment], parameters=plan.parameters, job_variables=plan.job_variables,
            name=plan.name, tags=plan.tags, idempotency_key=job.jobId,
        )
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
