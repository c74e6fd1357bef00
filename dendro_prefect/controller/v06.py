"""The controller of a Dendro 0.6 compute client: the rounds are the 0.2 controller's (rounds.py); what differs is
here. The service offers this client the pending jobs that are runnable (their dependencies completed), targeted
at it and fitting a free compute slot; a job's processor, with its image and executable, is the service app's,
read from the service once per app for APP_CACHE_SEC; a job goes to the deployment of the run method its required
resources are routed to (the configuration's `resource_routes`, else `default_job_run_method`), its resources as job
variables. Which compute client runs a job is settled by the
service when a worker claims it (`starting`), not here.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
from prefect.client.schemas.objects import FlowRun, StateType

from ..apps import AppSpecError
from ..central_jobs import ComputeClientJobs
from ..config import ComputeClientConfig
from ..protocol.models import parse
from ..protocol.transport import CentralError, ClaimRefused
from ..protocol.v06.models import JobStatusChangedHint, PubsubHint, PubsubSubscription, ServiceApp, ServiceJob
from . import reconcile
from .rounds import PROGRESS_STATUSES, Controller
from .routing import FlowRunPlan, RoutingError, job_tag, resource_tag

APP_CACHE_SEC = 60.0  # how long a service app's specification is used before it is read again


class ComputeClientController(Controller):
    def __init__(self, config: ComputeClientConfig, deployments: dict[str, str],
                 logger: logging.Logger | logging.LoggerAdapter, settle_sec: float = reconcile.SETTLE_SEC) -> None:
        super().__init__(ComputeClientJobs(config), deployments, logger, settle_sec)
        self._apps: dict[tuple[str, str], tuple[float, ServiceApp]] = {}

    async def load_apps(self) -> None:
        """Nothing to load ahead: a service's apps are read as its jobs name them."""

    @property
    def apps_loaded(self) -> int:
        return len(self._apps)

    def service_app(self, service_name: str, app_name: str) -> ServiceApp:
        key = (service_name, app_name)
        read_at, app = self._apps.get(key, (float("-inf"), None))
        if app is None or time.monotonic() - read_at > APP_CACHE_SEC:
            try:
                app = self.central.service_app(service_name, app_name)
            except CentralError as error:
                if error.transient:
                    raise
                raise AppSpecError(f"app {app_name} of service {service_name} cannot be read: {error}") from None
            self._apps[key] = (time.monotonic(), app)
        return app

    def plan(self, job: ServiceJob) -> FlowRunPlan:
        definition = job.jobDefinition
        processor = self.service_app(job.serviceName, definition.appName).appSpecification.processor(
            definition.processorName)
        if processor is None:
            raise AppSpecError(f"app {definition.appName} of service {job.serviceName} has no processor "
                               f"{definition.processorName}")
        resources = job.requiredResources
        run_method = self.config.run_method_of(resources.numCpus, resources.numGpus, resources.memoryGb,
                                               resources.timeSec)
        deployment = self.deployments.get(run_method)
        if not deployment:
            raise RoutingError(f"no deployment for run method {run_method}")
        return FlowRunPlan(
            deployment=deployment, run_method=run_method, parameters={"job_id": job.jobId},
            job_variables={"app_name": definition.appName, "app_image": processor.image or None,
                           "app_executable": processor.executable, "num_cpus": resources.numCpus,
                           "num_gpus": resources.numGpus, "memory_gb": resources.memoryGb,
                           "time_limit_sec": resources.timeSec},
            name=f"{definition.appName}/{definition.processorName} {job.jobId}",
            tags=[f"app:{definition.appName}", f"processor:{definition.processorName}", f"service:{job.serviceName}",
                  f"run-method:{run_method}", job_tag(job.jobId), resource_tag(self.config.identity)],
        )

    def wanted(self, job: ServiceJob) -> bool:
        """The service keeps offering a job its user cancelled (`canceled`, a mark the SDK does not read)."""
        return not job.canceled

    def cancelled_at_central(self, jobs: list[ServiceJob], active: dict[str, FlowRun]) -> list[tuple[FlowRun, str]]:
        return [(active[job.jobId], f"job {job.jobId} was canceled at the service") for job in jobs
                if job.canceled and job.jobId in active and active[job.jobId].state is not None
                and active[job.jobId].state.type != StateType.CANCELLING]

    async def _fail(self, job_id: str, job_private_key: str, reason: str) -> None:
        """The service takes a job's failure only from the compute client that claimed it: a pending job (one that
        cannot run) is claimed first. One another client claimed meanwhile is theirs, and left alone."""
        if (self.jobs.documents().get(job_id) or {}).get("status") == "pending":
            try:
                await anyio.to_thread.run_sync(self.central.set_job_status, job_id, job_private_key, "starting")
            except ClaimRefused as refusal:
                self.logger.warning("Job %s cannot run here and is not failed: %s", job_id, refusal)
                self.flow_runs[job_id] = ""
                return
            except CentralError as error:
                self.logger.error("Job %s cannot run here and could not be claimed to fail it: %s", job_id, error)
                return
        await super()._fail(job_id, job_private_key, reason)

    def pubsub_subscription(self) -> PubsubSubscription:
        return self.central.pubsub_subscription()

    def keep_message(self, document: Any) -> PubsubHint | None:
        """The service publishes every service's hints on one channel: this client's service's are kept."""
        hint = parse(PubsubHint, document, "PubSub message")
        return hint if hint.serviceName == self.config.service_name else None

    def needs_round(self, message: PubsubHint) -> bool:
        """A new job, a job that became runnable or failed, and the service's ping (answered by asking for jobs,
        which tells the service this client is alive) start a round."""
        return not (isinstance(message, JobStatusChangedHint) and message.status in PROGRESS_STATUSES)
