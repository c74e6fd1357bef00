"""The controller's loop: on every PubSub hint or poll interval, turn each pending Dendro job into
exactly one flow run; fail at the central, with a one-line reason, every job that cannot run; and
reconcile the central with Prefect (reconcile.py).

Idempotency comes from Prefect: the flow run's idempotency key is the job id (unique per flow, and all
job deployments share the `dendro-job` flow), so a job announced twice, polled again or seen by a
restarted controller still has one flow run. A round's new runs are created in bulk, one call per
deployment and up to BULK_CREATE_LIMIT jobs (Prefect's endpoint `create_flow_run/bulk`, one transaction),
which keeps that idempotency: a job's existing run comes back as if created.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections import defaultdict
from typing import Any, Callable, Literal
from uuid import UUID

import anyio
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import DeploymentFlowRunCreate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.states import Scheduled, to_state_create
from pydantic import BaseModel

from ..apps import AppCatalog, AppSpecError
from ..central_jobs import CentralJobs, ComputeResourceJobs, Job
from ..config import ComputeResourceConfig
from ..protocol.client import CentralError
from ..protocol.models import (
    AppsChangedMessage,
    ComputeResourceSpec,
    DendroJob,
    JobStatusChangedMessage,
    ProtocolError,
    PubsubMessage,
    PubsubSubscription,
    parse,
)
from ..protocol.outbox import StatusOutbox
from . import reconcile
from .heartbeat import ControllerHeartbeat, publish_heartbeat, utcnow
from .job_hints import SUBSCRIBED, JobHints
from .routing import FlowRunPlan, RoutingError, plan_flow_run

BULK_CREATE_LIMIT = 100  # flow runs per call of Prefect's create_flow_run/bulk (its own limit)
# How Prefect's bulk creation words the refusal of an item for what was asked (its parameters, its job
# variables, its deployment's queue): the job cannot run as asked and is failed. Any other refusal is the
# server's own error while creating it (SQLite's "database is locked", a lost connection): the job stays
# pending and is asked for again at the next round.
REFUSALS_OF_THE_REQUEST = ("Parameter validation failed", "Parameter schema enforcement", "Invalid schema",
                           "Error creating flow run", "Cannot create flow run")
CANCEL_CHECK_SEC = 2.0  # how often a waiting controller looks whether its flow run is being cancelled
# The statuses a job's worker reports on its way: the controller has nothing to do for them that its next
# poll would not do, and a round for each cost the Prefect server a read or two per job.
PROGRESS_STATUSES = ("starting", "running", "completed")


class Controller(abc.ABC):
    """The rounds, the same for both protocols; what differs (the apps, a job's plan, the PubSub messages) is a
    subclass's: `ComputeResourceController` (Dendro 0.2, below) and `v06.ComputeClientController`."""

    def __init__(self, jobs: CentralJobs, deployments: dict[str, str],
                 logger: logging.Logger | logging.LoggerAdapter, settle_sec: float = reconcile.SETTLE_SEC) -> None:
        self.jobs = jobs
        self.config = jobs.config
        self.deployments = deployments
        self.logger = logger
        self.central = jobs.client
        self.outbox = StatusOutbox()  # failures the central could not take yet (protocol/outbox.py)
        self.flow_runs: dict[str, str] = {}  # job id -> flow run id this controller created; "" if it failed the job
        self.reconciler = reconcile.Reconciler(self.config.identity, settle_sec)
        self.last_contact = self.last_intake = self.last_error_at = None
        self.last_error: str | None = None
        self.jobs_submitted = 0
        # Deployment name -> id, read once: `prefect deploy` of a deployment keeps its id (a deleted and
        # recreated one is read again, see _create_run).
        self.deployment_ids: dict[str, UUID] = {}
        self.cancel_checked_at = float("-inf")  # when the controller last asked whether its flow run is cancelled

    @abc.abstractmethod
    async def load_apps(self) -> None:
        """Ready what planning jobs needs of the apps (at the start, and whenever the central says they changed)."""

    @abc.abstractmethod
    def plan(self, job: Job) -> FlowRunPlan:
        """The job's flow run; AppSpecError or RoutingError when it has none."""

    @abc.abstractmethod
    def pubsub_subscription(self) -> Any:
        """Where the central's PubSub hints are (blocking)."""

    @abc.abstractmethod
    def keep_message(self, document: Any) -> Any | None:
        """A PubSub message for this controller, parsed; None for another's (ProtocolError when malformed)."""

    @abc.abstractmethod
    def needs_round(self, message: Any) -> bool:
        """Whether the message asks for a round at once."""

    def apps_changed(self, messages: list) -> bool:
        return False

    def wanted(self, job: Job) -> bool:
        """Whether a pending job is to be run (one its owner cancelled is not)."""
        return True

    def cancelled_at_central(self, jobs: list[Job], active: dict[str, FlowRun]) -> list[tuple[FlowRun, str]]:
        """The active runs of jobs their owner cancelled at the central (where cancelling is a mark on the job,
        not an end): their cancellation in Prefect kills the job and fails it at the central, as for any other."""
        return []

    @property
    def apps_loaded(self) -> int:
        return 0

    async def intake(self, prefect: PrefectClient) -> int:
        """One reconciliation: submit every pending job that has no flow run, in bulk, and
        settle the disagreements between the central and Prefect (see reconcile.py). Returns how many
        flow runs were created."""
        # The two reads at once (gather raises the first error as it is: a CentralError stays one).
        unfinished, active = await asyncio.gather(self.jobs.unfinished(time.monotonic()),
                                                  reconcile.active_runs(prefect, self.config.identity))
        unfinished_ids = set(unfinished)
        for job_id in active.keys() - unfinished_ids:  # a job the central's list leaves out may not have ended
            if await self.jobs.missing(job_id) is not None:
                unfinished_ids.add(job_id)
        documents = self.jobs.read_documents()
        jobs = [job for job in [await self._parse(d) for d in documents if self._worth_parsing(d)] if job is not None]
        actions = await self.reconciler.decide(prefect, unfinished_ids, jobs, active)
        for flow_run, reason in [*actions.cancel, *self.cancelled_at_central(jobs, active)]:
            self.logger.warning("Flow run %s cancelled: %s", flow_run.name, reason)
            await self.reconciler.cancel(prefect, flow_run, reason)
        for job, reason in actions.fail:
            await self._fail(job.jobId, job.jobPrivateKey, reason)
        for job in actions.outside:
            self.logger.warning("Job %s is %s at the central and this Prefect never had a flow run of it (launched by "
                                "another controller, e.g. the original daemon): left to finish", job.jobId, job.status)
        pending = [job for job in jobs if job.status == "pending" and job.jobId not in active and self.wanted(job)]
        return await self._submit_all(prefect, pending) if pending else 0

    def _worth_parsing(self, document: object) -> bool:
        """Jobs already failed by this controller are not parsed (and failed) again while the
        central still lists them."""
        job_id = document.get("jobId") if isinstance(document, dict) else None
        return not (isinstance(job_id, str) and self.flow_runs.get(job_id) == "")

    async def _submit_all(self, prefect: PrefectClient, jobs: list[Job]) -> int:
        """Plan every job's run, then create them in bulk per deployment; a job that cannot be planned or whose
        run Prefect refuses is failed."""
        planned: dict[str, list[tuple[Job, FlowRunPlan]]] = defaultdict(list)
        for job in jobs:
            try:
                plan = self.plan(job)
            except (AppSpecError, RoutingError) as error:
                await self._fail(job.jobId, job.jobPrivateKey, str(error))
                continue
            planned[plan.deployment].append((job, plan))
        submitted = 0
        for deployment, batch in planned.items():
            for start in range(0, len(batch), BULK_CREATE_LIMIT):
                submitted += await self._submit_batch(prefect, deployment, batch[start:start + BULK_CREATE_LIMIT])
        return submitted

    async def _submit_batch(self, prefect: PrefectClient, deployment: str,
                            batch: list[tuple[Job, FlowRunPlan]]) -> int:
        """One bulk creation, then one read of the runs it gave back: a run that already ended (the idempotency
        key gave back an earlier one) is not launched again."""
        try:
            results = await self._create_runs(prefect, deployment, batch)
        except RoutingError as error:
            for job, _ in batch:
                await self._fail(job.jobId, job.jobPrivateKey, str(error))
            return 0
        ids = [result.flow_run_id for result in results if result.flow_run_id is not None]
        runs = {run.id: run for run in await prefect.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids))} if ids else {}
        submitted = 0
        for (job, plan), result in zip(batch, results):
            if result.flow_run_id is None and (result.error or "").startswith(REFUSALS_OF_THE_REQUEST):
                await self._fail(job.jobId, job.jobPrivateKey, f"Prefect refused its flow run: {result.error}")
            elif result.flow_run_id is None:
                self.logger.warning("Job %s: Prefect could not create its flow run (%s); asked again next round",
                                    job.jobId, (result.error or "no reason given").splitlines()[0])
            elif await self._take(prefect, job, plan, runs.get(result.flow_run_id), result.flow_run_id):
                submitted += 1
        return submitted

    async def _parse(self, document: object) -> Job | None:
        try:
            return parse(self.jobs.job_model, document, "job")
        except ProtocolError as error:
            job_id = document.get("jobId") if isinstance(document, dict) else None
            key = document.get("jobPrivateKey") if isinstance(document, dict) else None
            if isinstance(job_id, str) and isinstance(key, str):
                await self._fail(job_id, key, str(error))
            else:
                self.logger.error("Unusable job from the central: %s", error)
            return None

    async def _take(self, prefect: PrefectClient, job: Job, plan: FlowRunPlan, flow_run: FlowRun | None,
                    flow_run_id: UUID) -> bool:
        """Record the job's run; False when the idempotency key gave back a run that already ended: the job is
        not launched again (a run that crashed before the launch goes back to the queue, a few times)."""
        if flow_run is not None and flow_run.state is not None and flow_run.state.is_final():
            if not await reconcile.requeue_crashed(prefect, flow_run):
                await self._fail(job.jobId, job.jobPrivateKey,
                                 f"not launched again: {reconcile.why_run_ended(flow_run)}")
                return False
            self.logger.warning("Job %s: its flow run %s crashed before the launch (%s); back in the queue",
                                job.jobId, flow_run.name, flow_run.state.message)
        self.flow_runs[job.jobId] = str(flow_run_id)
        self.logger.info("Job %s → flow run %s (%s)", job.jobId, plan.name, plan.deployment)
        return True

    async def _create_runs(self, prefect: PrefectClient, deployment: str,
                           batch: list[tuple[Job, FlowRunPlan]]) -> list[BulkCreateResult]:
        """The batch's runs from their deployment, whose id is read once, and again once it is gone (the
        deployment was deleted and applied again since)."""
        deployment_id = self.deployment_ids.get(deployment)
        if deployment_id is not None:
            try:
                return await _create_bulk(prefect, deployment_id, batch)
            except PrefectHTTPStatusError as error:
                if error.response.status_code != 404:
                    raise
        try:
            deployment_id = (await prefect.read_deployment_by_name(deployment)).id
        except ObjectNotFound:
            raise RoutingError(f"no deployment {deployment} for run method {batch[0][1].run_method}") from None
        self.deployment_ids[deployment] = deployment_id
        return await _create_bulk(prefect, deployment_id, batch)

    async def _fail(self, job_id: str, job_private_key: str, reason: str) -> None:
        """Fail a job at the central as the workers do, through the outbox: a central that is down gets the
        failure once it is back, and the job is neither parsed nor failed again meanwhile."""
        self.logger.error("Job %s failed: %s", job_id, reason)
        self.flow_runs[job_id] = ""
        await self.outbox.send(self.central, job_id, job_private_key, "failed", reason, self.logger)

    def heartbeat(self, hints: JobHints) -> ControllerHeartbeat:
        return ControllerHeartbeat(
            compute_resource_id=self.config.identity, protocol=self.config.protocol, central_url=self.config.central_url,
            last_contact=self.last_contact, last_intake=self.last_intake, pubsub_connected=hints.connected,
            apps_loaded=self.apps_loaded, jobs_submitted=self.jobs_submitted,
            jobs_outside_prefect=sorted(self.reconciler.outside), last_error=self.last_error,
            last_error_at=self.last_error_at)

    async def run(self, poll_interval_sec: float, run_for_sec: float | None = None,
                  flow_run_id: UUID | None = None) -> bool:
        """Run until cancelled (or for `run_for_sec`): hints and polls drive intake. It subscribes
        before it reports the apps' spec, so a job created once the spec is reported is heard. With
        `flow_run_id` (its own flow run) it also stops within CANCEL_CHECK_SEC once that run is
        cancelled (see `_wait`). Returns whether it stopped for that."""
        subscription = await anyio.to_thread.run_sync(self.pubsub_subscription)
        hints = JobHints(subscription, self.keep_message, self.logger, self.config.pubsub_origin)
        hints.start()
        deadline = None if run_for_sec is None else time.monotonic() + run_for_sec
        apps_changed = True  # the apps are loaded first, and again whenever the central says they changed
        try:
            async with get_client() as prefect:  # one Prefect client for every round: no connection set-up per round
                while deadline is None or time.monotonic() < deadline:
                    # Rounds start every poll interval (sooner on a hint), however long a round takes.
                    round_started = time.monotonic()
                    apps_changed = await self._round(prefect, apps_changed)
                    await publish_heartbeat(self.heartbeat(hints), min_interval_sec=poll_interval_sec, client=prefect,
                                            log=self.logger)
                    messages = await self._wait(prefect, hints, round_started + poll_interval_sec, flow_run_id)
                    if messages is None:
                        self.logger.info("The subscription flow run was cancelled in Prefect: the controller stops")
                        return True
                    apps_changed = apps_changed or self.apps_changed(messages)
            return False
        finally:
            hints.stop()

    async def _wait(self, prefect: PrefectClient, hints: JobHints, until: float, flow_run_id: UUID | None) -> list | None:
        """The hints that arrive before `until` (a monotonic time; ending the wait at once if one needs a
        round), or None once the controller's own
        flow run is being cancelled, which is looked at every CANCEL_CHECK_SEC however long the poll
        interval (Prefect's own cancellation of a flow run gives up for good after an outage), and no more
        often however many hints wake it."""
        while True:
            if flow_run_id is not None and time.monotonic() >= self.cancel_checked_at + CANCEL_CHECK_SEC:
                self.cancel_checked_at = time.monotonic()
                if await _cancelling(prefect, flow_run_id):
                    return None
            next_check = until if flow_run_id is None else min(until, self.cancel_checked_at + CANCEL_CHECK_SEC)
            messages = await hints.wait(max(0.0, next_check - time.monotonic()))
            if any(m is SUBSCRIBED or self.needs_round(m) for m in messages) or time.monotonic() >= until:
                return messages

    async def _round(self, prefect: PrefectClient, load_apps: bool) -> bool:
        """One round: the apps (when they changed) and an intake. Any error is logged and the next round
        retries. Returns whether the apps still need loading (their load failed)."""
        try:
            if load_apps:
                await self.load_apps()
                load_apps = False
            self.jobs_submitted += await self.intake(prefect)
            self.last_contact = self.last_intake = utcnow()
        except CentralError as error:
            self.logger.warning("Central unreachable, will retry: %s", error)
            self.last_error, self.last_error_at = f"central unreachable: {error}", utcnow()
        except Exception as error:  # the Prefect API restarting, most likely: the next round retries
            self.logger.warning("Intake round failed, will retry: %s: %s", type(error).__name__, error)
            self.last_error = f"intake round failed: {type(error).__name__}: {error}"
            self.last_error_at = utcnow()
        return load_apps


class BulkCreateResult(BaseModel):
    """One item of Prefect's answer to `POST /deployments/{id}/create_flow_run/bulk`, in the order asked."""

    flow_run_id: UUID | None = None
    status: Literal["CREATED", "FAILED"]
    error: str | None = None


async def _create_bulk(prefect: PrefectClient, deployment_id: UUID,
                       batch: list[tuple[Job, FlowRunPlan]]) -> list[BulkCreateResult]:
    """The batch's flow runs, Scheduled; the job id is each run's idempotency key."""
    return await create_flow_runs_in_bulk(prefect, deployment_id, [DeploymentFlowRunCreate(
        parameters=plan.parameters, job_variables=plan.job_variables, name=plan.name, tags=plan.tags,
        idempotency_key=job.jobId, state=to_state_create(Scheduled()),
    ) for job, plan in batch])


async def create_flow_runs_in_bulk(prefect: PrefectClient, deployment_id: UUID,
                                   runs: list[DeploymentFlowRunCreate]) -> list[BulkCreateResult]:
    """Up to BULK_CREATE_LIMIT runs of a deployment in one call (and one transaction) of Prefect's API
    (`create_flow_run/bulk`); its answer per run, in the order asked. The benches create theirs with it too."""
    body = [run.model_dump(mode="json", exclude_unset=True) for run in runs]
    response = await prefect.request("POST", "/deployments/{id}/create_flow_run/bulk",
                                     path_params={"id": deployment_id}, json=body)
    results = [BulkCreateResult.model_validate(item) for item in response.json()["results"]]
    if len(results) != len(runs):
        raise ProtocolError(f"Prefect answered {len(results)} results for {len(runs)} flow runs")
    return results


async def _cancelling(prefect: PrefectClient, flow_run_id: UUID) -> bool:
    """Whether the flow run is being cancelled (False while the Prefect API cannot say)."""
    try:
        state = (await prefect.read_flow_run(flow_run_id)).state
    except Exception:
        return False
    return state is not None and state.type in (StateType.CANCELLING, StateType.CANCELLED)


class ComputeResourceController(Controller):
    """Dendro 0.2: the apps are the compute resource's own (their specs loaded here and reported to the central,
    as the original daemon does); a job goes to the deployment of its runMethod."""

    def __init__(self, config: ComputeResourceConfig, deployments: dict[str, str],
                 logger: logging.Logger | logging.LoggerAdapter, settle_sec: float = reconcile.SETTLE_SEC) -> None:
        super().__init__(ComputeResourceJobs(config), deployments, logger, settle_sec)
        self.catalog = AppCatalog()

    async def load_apps(self) -> None:
        """Load the apps' specs and report them to the central, as the original daemon does."""
        apps = await anyio.to_thread.run_sync(self.central.get_apps)
        self.catalog = await anyio.to_thread.run_sync(AppCatalog.load, apps)
        for name, reason in self.catalog.errors.items():
            self.logger.error("App %s skipped: %s", name, reason)
        spec = ComputeResourceSpec(
            apps=[app.spec for app in self.catalog.apps],
            defaultJobRunMethod=self.config.default_job_run_method,
            availableJobRunMethods=self.config.available_job_run_methods,
        )
        await anyio.to_thread.run_sync(self.central.put_spec, spec)
        self.last_contact = utcnow()
        self.logger.info("Loaded %d app(s): %s", len(self.catalog.apps), ", ".join(a.name for a in self.catalog.apps) or "none")

    @property
    def apps_loaded(self) -> int:
        return len(self.catalog.apps)

    def plan(self, job: DendroJob) -> FlowRunPlan:
        return plan_flow_run(job, self.catalog.for_processor(job.processorName), self.deployments)

    def pubsub_subscription(self) -> PubsubSubscription:
        return self.central.get_pubsub_subscription()

    def keep_message(self, document: Any) -> PubsubMessage | None:
        return resource_messages(self.config.compute_resource_id)(document)

    def needs_round(self, message: PubsubMessage) -> bool:
        """New jobs, approved ones (a `pending` status change), failures and the apps' changes start a round."""
        return not (isinstance(message, JobStatusChangedMessage) and message.status in PROGRESS_STATUSES)

    def apps_changed(self, messages: list[PubsubMessage]) -> bool:
        return any(isinstance(m, AppsChangedMessage) for m in messages)


def resource_messages(compute_resource_id: str) -> Callable[[Any], PubsubMessage | None]:
    """Which 0.2 PubSub messages a compute resource keeps: its own (others' share a channel of a central)."""
    def keep(document: Any) -> PubsubMessage | None:
        message = parse(PubsubMessage, document, "PubSub message")
        return message if message.computeResourceId == compute_resource_id else None
    return keep
