"""The one worker shape every dendro-prefect backend shares: Prefect's hooks, and nothing else.

The flow run is the Dendro job. App images hold no Prefect, so the worker owns the run's state: a run
arrives (`run`), takes the slots of its tag limits, and a `JobRun` (job_run.py) lives the job's life;
runs a lost worker left behind are taken up by `Recovery` (recovery.py). Besides Prefect's own query
loop, runs are picked up as Prefect schedules them (pickup.py).
"""

from __future__ import annotations

import abc
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable

import anyio
from prefect.client.schemas.objects import FlowRun
from prefect.states import AwaitingConcurrencySlot, Running, State
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult
from pydantic import BaseModel, Field

from ..central_jobs import CentralJobs, Client, Job, central_jobs_for
from ..protocol.outbox import StatusOutbox
from .commands import ContainerMethodSetting, container_method_for
from .concurrency import SlotsTaken, TagSlots
from .job_card import publish_job_card
from .job_run import EXIT_GRACE_SEC, JobRun
from .launch import Launcher
from .pickup import OneQueryAtATime, ScheduledRunPickup
from .read_cache import cache_reads
from .recovery import NOT_LAUNCHED, Recovery
from .run_state import set_run_state
from .watch import Watch, cancel_requests

ORPHAN_CHECK_INTERVAL_SEC = 5.0


class JobSettings(BaseModel):
    """Every pool's job variables, declared once: the pool's form in the Prefect UI (the variables) and
    what a job is launched with (the job configuration) are both made of them. The subscription flow
    fills the app and the resources from the Dendro job."""

    config_file: str = Field(
        default="", title="Configuration file",
        description="The compute resource's configuration file; empty: the one register-compute-resource wrote "
        "into the dendro-prefect home ($DENDRO_PREFECT_HOME, ~/.dendro-prefect) of the worker's user.",
    )
    app_name: str = Field(default="", title="App", description="Dendro app of the job (set per job).")
    app_image: str | None = Field(default=None, title="App image",
                                  description="Container image of the app (set per job).")
    app_executable: str = Field(default="", title="App executable", description="The app's entry point (set per job).")
    num_cpus: int = Field(default=1, title="CPUs", description="CPUs (requiredResources.numCpus of the job).")
    num_gpus: int = Field(default=0, title="GPUs", description="GPUs (requiredResources.numGpus of the job).")
    memory_gb: float = Field(default=1.0, title="Memory (GB)",
                             description="Memory in GB (requiredResources.memoryGb of the job).")
    time_limit_sec: float | None = Field(default=None, title="Time limit (s)",
                                         description="Time limit (requiredResources.timeSec).")
    job_root: str = Field(default="dendro-jobs", title="Job root directory",
                          description="Directory that holds one working directory per job.")
    sdk_bin_dir: str = Field(
        default="", title="dendro SDK directory",
        description="Apps without an image run as plain processes under the dendro SDK, which needs its `dendro` "
        "command: the directory that holds it, put first on the app's PATH (empty: the worker's PATH).")


class DendroJobConfiguration(BaseJobConfiguration, JobSettings):
    @classmethod
    def _base_environment(cls) -> dict[str, str]:
        """None of Prefect's settings: apps hold no Prefect (a job gets no PREFECT_ variable, job_run.py), and
        dumping every setting per run was a sixth of the worker's CPU at volume."""
        return {}


class DendroVariables(BaseVariables, JobSettings):
    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Each variable with its `position`, by which the Prefect UI orders the pool's form: a PostgreSQL
        Prefect server keeps the template in JSONB, which does not keep the order of its keys.

        An empty default (None, "", [], {}) is left out: the form shows an empty field either way and the
        job configuration's own default applies, while Prefect validates each default in the template
        against the whole schema for every run created (bench/job_variables.py)."""
        schema = super().model_json_schema(*args, **kwargs)
        for position, variable in enumerate(schema.get("properties", {}).values()):
            variable["position"] = position
            if "default" in variable and variable["default"] in (None, "", [], {}):
                del variable["default"]
        return schema


class DendroWorkerResult(BaseWorkerResult):
    pass


class DendroWorker(BaseWorker[DendroJobConfiguration, DendroVariables, DendroWorkerResult], abc.ABC):
    """Subclasses set `type`, the configuration classes, and say which launcher runs a job."""

    job_configuration = DendroJobConfiguration
    job_configuration_variables = DendroVariables
    settings_model: type[BaseModel] = BaseModel  # the pool's own job settings, which its launchers are made of
    _documentation_url = "https://github.com/flatironinstitute/dendro"
    poll_interval_sec = 1.0
    central_interval_sec = 2.0
    # How long past its time limit a job may run before the worker kills it: the SDK stops the app
    # at the limit, and infrastructure with limits of its own (Slurm) is given time to enforce them.
    overrun_grace_sec = EXIT_GRACE_SEC

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watch: Watch | None = None
        self._central_jobs: dict[str, CentralJobs] = {}
        self._following: dict = {}  # flow run id → infrastructure id (None until launched) of the runs it follows
        self._orphans_checked_at = float("-inf")
        self._recovery = Recovery(self)
        self._tag_slots: TagSlots | None = None
        self._outbox = StatusOutbox()
        self._pickup: ScheduledRunPickup | None = None
        self._queries = OneQueryAtATime()
        self._launchers: dict[str, Launcher] = {}

    def launcher(self, configuration: DendroJobConfiguration) -> Launcher:
        """The backend that runs jobs of this configuration: one per distinct pool settings, kept for the
        worker's life (a launcher watches its jobs)."""
        settings = self.settings_model.model_validate(
            configuration.model_dump(include=set(self.settings_model.model_fields)))
        if isinstance(settings, ContainerMethodSetting):
            configured = settings.container_method or self.central_jobs(configuration.config_file).config.container_method
            settings.container_method = container_method_for(configured, configuration.app_image)
        key = settings.model_dump_json()
        if key not in self._launchers:
            self._launchers[key] = self.new_launcher(settings)
        return self._launchers[key]

    @abc.abstractmethod
    def new_launcher(self, settings: BaseModel) -> Launcher:
        """A launcher of this pool's `settings_model` (its container method resolved for the job, if it has one)."""

    def job_time_limit(self, configuration: DendroJobConfiguration) -> float | None:
        """The time limit the infrastructure enforces for a job: its timeSec, and the pool's margin where the
        infrastructure enforces a limit of its own (`infrastructure_time_limit` of the pool's settings)."""
        limit = getattr(configuration, "infrastructure_time_limit", None)
        return limit(configuration.time_limit_sec) if limit else configuration.time_limit_sec

    # --- Prefect's entry points ------------------------------------------------------------------------------

    async def run(
        self,
        flow_run: FlowRun,
        configuration: DendroJobConfiguration,
        task_status: anyio.abc.TaskStatus[str] | None = None,
    ) -> DendroWorkerResult:
        run_logger = self.get_flow_run_logger(flow_run)
        try:
            lease = await self._slots().acquire(flow_run)
        except SlotsTaken as taken:
            return await self._await_slot(flow_run, taken, task_status, run_logger)
        async with self._slots().held(lease):
            job_run = JobRun(flow_run, configuration, self, run_logger)
            infrastructure_id = await job_run.launch()
            if task_status is not None:
                task_status.started(infrastructure_id or f"{NOT_LAUNCHED}{job_run.job_id}")
            if infrastructure_id is None:
                await job_run.refuse()
                return DendroWorkerResult(identifier=job_run.job_id, status_code=0)
            self._following[flow_run.id] = infrastructure_id  # before Prefect records it: see kill_infrastructure
            self._runs_task_group.start_soon(publish_job_card, self.client, job_run)
            await self.set_state(flow_run, Running())
            await self._follow_to_the_end(job_run)
            return DendroWorkerResult(identifier=infrastructure_id, status_code=0)

    async def _await_slot(self, flow_run: FlowRun, taken: SlotsTaken, task_status, run_logger) -> DendroWorkerResult:
        """Back to the queue until the limit has room, as Prefect does for deployment limits."""
        if flow_run.state is None or flow_run.state.name != "AwaitingConcurrencySlot":
            run_logger.info("Job waits for a slot: %s", taken)
        if task_status is not None:
            task_status.started(None)
        retry_at = datetime.now(timezone.utc) + timedelta(seconds=taken.retry_after)
        await self.set_state(flow_run, AwaitingConcurrencySlot(scheduled_time=retry_at, message=str(taken)))
        return DendroWorkerResult(identifier=str(flow_run.id), status_code=0)

    def _slots(self) -> TagSlots:
        if self._tag_slots is None:
            self._tag_slots = TagSlots(self.client)
        return self._tag_slots

    async def setup(self) -> None:
        await super().setup()
        cache_reads(self.client)

    async def sync_with_backend(self) -> None:
        """Once the worker knows its pool, it also picks up flow runs as Prefect schedules them
        (pickup.py), besides its queries."""
        await super().sync_with_backend()
        if self._pickup is None and self._work_pool is not None:
            self._pickup = ScheduledRunPickup(self._work_pool.id, self._query_pool, self._logger,
                                              lambda: self._work_pool.concurrency_limit is not None)
            self._runs_task_group.start_soon(self._pickup.run)

    async def get_and_submit_flow_runs(self):
        """Every few polls, take up the jobs that a lost worker of this pool had launched (recovery.py)."""
        if time.monotonic() - self._orphans_checked_at >= ORPHAN_CHECK_INTERVAL_SEC:
            self._orphans_checked_at = time.monotonic()
            try:
                await self._recovery.take_up_orphans()
            except Exception as error:  # never let this stop the worker from polling
                self._logger.warning("Could not look for orphaned jobs: %s", error)
        return await self._query_pool()

    async def _query_pool(self):
        """Prefect's query and submission, the loop's and the pickup's taking turns (pickup.py
        `OneQueryAtATime`: the pool's concurrency limit holds only so)."""
        return await self._queries.query(super().get_and_submit_flow_runs, lambda: self._submitting_flow_run_ids)

    # Where a run's Pending proposal ends, BaseWorker offers no hook: these two private methods of Prefect
    # 3.9's are the only places that say so (the proposal, and the submission that skips it when the run's
    # deployment is gone). Each tells the query turns that the run has settled.
    async def _propose_pending_state(self, flow_run: FlowRun) -> bool:
        try:
            return await super()._propose_pending_state(flow_run)
        finally:
            self._queries.settled(flow_run.id)

    async def _submit_run(self, flow_run: FlowRun) -> None:
        try:
            await super()._submit_run(flow_run)
        finally:
            self._queries.settled(flow_run.id)

    async def _propose_submitting_state(self, flow_run: FlowRun) -> None:
        """No Submitting state: our launch sets Running a moment later, and each state costs the server a
        transaction, orchestration rules and an event (one job in four of them at volume)."""

    async def kill_infrastructure(
        self, infrastructure_pid: str, configuration: DendroJobConfiguration, grace_seconds: int = 30
    ) -> None:
        """Prefect calls this for a launched run cancelled before it was Running. Cancellation is one mechanism,
        the job's own loop (job_run.py), which kills, fails the job at the central and ends the run: it sees the
        Cancelling run within a poll. Only a job that no loop of this worker follows is killed here."""
        if infrastructure_pid in self._following.values():
            return
        launcher = self.launcher(configuration)
        await launcher.kill(infrastructure_pid)
        await launcher.release(infrastructure_pid)

    # --- what job runs and recovery need of the worker (job_run.WorkerServices) --------------------------------

    def central_jobs(self, config_file: str) -> CentralJobs:
        if config_file not in self._central_jobs:
            self._central_jobs[config_file] = central_jobs_for(config_file)
        return self._central_jobs[config_file]

    def watch(self) -> Watch:
        if self._watch is None:
            self._watch = Watch(lambda ids: cancel_requests(self.client, ids), self.poll_interval_sec,
                                self.central_interval_sec)
        return self._watch

    async def set_state(self, flow_run: FlowRun, state: State) -> None:
        await set_run_state(self.client, flow_run.id, state, self.get_flow_run_logger(flow_run))

    async def fail_at_central(self, client: Client, job: Job, reason: str, run_logger) -> None:
        """Fail the job at the central with `reason`; while the central is unreachable the failure waits
        in this worker's outbox, retried in the background until the central takes it (outbox.py)."""
        await self._outbox.send(client, job.jobId, job.jobPrivateKey, "failed", reason, run_logger)

    async def configuration_of(self, flow_run: FlowRun) -> DendroJobConfiguration:
        return await self.job_configuration.resolve_for_flow_run(
            flow_run, client=self.client, work_pool=self.work_pool, worker_name=self.name, worker_id=self.backend_id)

    @property
    def work_pool_name(self) -> str:
        return self._work_pool_name

    def busy_run_ids(self) -> set:
        """The runs this worker follows or is submitting: none of them is an orphan."""
        return set(self._following) | self._submitting_flow_run_ids

    def start_following(self, flow_run: FlowRun, take_up: Callable[[FlowRun], Awaitable[None]]) -> None:
        """Take up a run in the background; it counts as followed from now on."""
        self._following.setdefault(flow_run.id, flow_run.infrastructure_pid)

        async def taking_up() -> None:
            try:
                await take_up(flow_run)
            finally:
                self._following.pop(flow_run.id, None)

        self._runs_task_group.start_soon(taking_up)

    async def follow_taken_up(self, job_run: JobRun) -> None:
        """Follow a job taken up again, holding its tag limits' slots if it can have them (it runs already)."""
        async with self._slots().held(await self._slots().acquire(job_run.flow_run, wait=False)):
            await self._follow_to_the_end(job_run)

    async def _follow_to_the_end(self, job_run: JobRun) -> None:
        self._following[job_run.flow_run.id] = job_run.infrastructure_id
        try:
            await job_run.follow_to_the_end()
        finally:
            self._following.pop(job_run.flow_run.id, None)
