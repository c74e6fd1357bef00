"""The one worker shape every dendro-prefect backend shares.

The flow run is the Dendro job. App images hold no Prefect, so the worker itself fetches the job from
the central, sets it `starting`, has its backend launch the app, records the infrastructure id on the
flow run, streams the app's output into the flow run's logs, and mirrors the job's end into the flow
run's state. It also kills the job when the flow run is cancelled in Prefect, when the job is failed
or deleted at the central, or when it overruns its time limit.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import Abort
from prefect.states import AwaitingConcurrencySlot, Cancelled, Completed, Crashed, Failed, Running, Scheduled, State
from prefect.utilities.engine import propose_state
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult
from pydantic import Field

from ..config import ComputeResourceConfig, ConfigError
from ..protocol.client import CentralClient, CentralError
from ..protocol.models import DendroJob, ProtocolError, parse
from .concurrency import SlotsTaken, TagSlots
from .job_card import job_card, job_card_key
from .job_dir import JobDirectory
from .launch import InfrastructureState, Launcher, LaunchError, LaunchRequest, job_environment
from .outbox import StatusOutbox, set_status_before_launch, until_central_answers
from .pickup import OneQueryAtATime, ScheduledRunPickup
from .read_cache import cache_reads
from .watch import Observation, Watch, WatchedJob

REDACTED = "[redacted]"
NOT_LAUNCHED = "not-launched:"  # the infrastructure id of a run whose job was refused
SDK_FAILURE_PREFIX = "Job failed: "
SDK_EXIT_FAILURE = "Error running job: return code"  # the SDK's reason when the app's process failed
APP_LINES_ON_FAILURE = 5
# The dendro SDK reports `completed` just before it exits; give a finished job this long to exit.
EXIT_GRACE_SEC = 15.0
# A failure the app did not report (yet) gets this long before the job is killed as failed elsewhere.
UNREPORTED_FAILURE_GRACE_SEC = 2.5
ORPHAN_CHECK_INTERVAL_SEC = 5.0
# A Pending run without a worker's label this old was left by a worker lost before it labelled it.
STRANDED_PENDING_SEC = 30.0
RUNS_PAGE = 200  # Prefect's default page size


class DendroJobConfiguration(BaseJobConfiguration):
    """Per-job settings; the subscription flow fills the app and resources from the Dendro job."""

    config_file: str = Field(default="")
    app_name: str = Field(default="")
    app_image: str | None = Field(default=None)
    app_executable: str = Field(default="")
    num_cpus: int = Field(default=1)
    num_gpus: int = Field(default=0)
    memory_gb: float = Field(default=1.0)
    time_limit_sec: float | None = Field(default=None)
    job_root: str = Field(default="dendro-jobs")
    sdk_bin_dir: str = Field(default="")


class DendroVariables(BaseVariables):
    config_file: str = Field(
        default="", title="Configuration file",
        description="The compute resource's configuration file; empty: the one register-compute-resource wrote "
        "into the dendro-prefect home ($DENDRO_PREFECT_HOME, ~/.dendro-prefect) of the worker's user.",
    )
    app_name: str = Field(default="", title="App", description="Dendro app of the job (set per job).")
    app_image: str | None = Field(default=None, title="App image",
        description="Container image of the app (set per job).")
    app_executable: str = Field(default="", title="App executable",
        description="The app's entry point (set per job).")
    num_cpus: int = Field(default=1, title="CPUs", description="CPUs (requiredResources.numCpus of the job).")
    num_gpus: int = Field(default=0, title="GPUs", description="GPUs (requiredResources.numGpus of the job).")
    memory_gb: float = Field(default=1.0, title="Memory (GB)",
        description="Memory in GB (requiredResources.memoryGb of the job).")
    time_limit_sec: float | None = Field(default=None, title="Time limit (s)",
        description="Time limit (requiredResources.timeSec).")
    job_root: str = Field(default="dendro-jobs", title="Job root directory",
        description="Directory that holds one working directory per job.")
    sdk_bin_dir: str = Field(default="", title="dendro SDK directory",
        description="Apps without an image run as plain processes under the dendro SDK, which needs its `dendro` "
        "command: the directory that holds it, put first on the app's PATH (empty: the worker's PATH).")


class DendroWorkerResult(BaseWorkerResult):
    pass


class JobRefused(Exception):
    """The job cannot be launched; the message is the one-line reason given to the central."""


class CentralConnection:
    """A compute resource's configuration and central client. Its unfinished jobs are read once for
    everyone who asks within a short while: many launches and the watch share one call."""

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


class DendroWorker(BaseWorker[DendroJobConfiguration, DendroVariables, DendroWorkerResult], abc.ABC):
    """Subclasses set `type`, the configuration classes, and say which launcher runs a job."""

    job_configuration = DendroJobConfiguration
    job_configuration_variables = DendroVariables
    poll_interval_sec = 1.0
    central_interval_sec = 2.0
    # How long past its time limit a job may run before the worker kills it: the SDK stops the app
    # at the limit, and infrastructure with limits of its own (Slurm) is given time to enforce them.
    overrun_grace_sec = EXIT_GRACE_SEC

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watch: Watch | None = None
        self._connections: dict[str, CentralConnection] = {}
        self._following: set = set()  # flow run ids this worker follows
        self._orphans_checked_at = float("-inf")
        self._offline_workers_seen: set[str] | None = None  # None: not looked yet
        self._tag_slots: TagSlots | None = None
        self._outbox = StatusOutbox()
        self._pickup: ScheduledRunPickup | None = None
        self._queries = OneQueryAtATime()

    @abc.abstractmethod
    def launcher(self, configuration: DendroJobConfiguration) -> Launcher:
        """The backend that runs jobs of this configuration."""

    def job_time_limit(self, configuration: DendroJobConfiguration) -> float | None:
        """The time limit the infrastructure enforces for a job (the job's timeSec by default)."""
        return configuration.time_limit_sec

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
            return await self._launch_and_follow(flow_run, configuration, task_status, run_logger)

    async def _await_slot(self, flow_run: FlowRun, taken: SlotsTaken, task_status, run_logger) -> DendroWorkerResult:
        """Back to the queue until the limit has room, as Prefect does for deployment limits."""
        if flow_run.state is None or flow_run.state.name != "AwaitingConcurrencySlot":
            run_logger.info("Job waits for a slot: %s", taken)
        if task_status is not None:
            task_status.started(None)
        retry_at = datetime.now(timezone.utc) + timedelta(seconds=taken.retry_after)
        await self._set_state(flow_run, AwaitingConcurrencySlot(scheduled_time=retry_at, message=str(taken)))
        return DendroWorkerResult(identifier=str(flow_run.id), status_code=0)

    def _slots(self) -> TagSlots:
        if self._tag_slots is None:
            self._tag_slots = TagSlots(self.client)
        return self._tag_slots

    async def _launch_and_follow(self, flow_run: FlowRun, configuration: DendroJobConfiguration, task_status,
                                 run_logger) -> DendroWorkerResult:
        job_id = str(flow_run.parameters.get("job_id", ""))
        central: CentralConnection | None = None
        job: DendroJob | None = None
        try:
            central = self._central(configuration.config_file)
            job = await self._fetch_job(central, job_id)
            launcher = self.launcher(configuration)
            request = self._launch_request(job, configuration, central.config, flow_run)
            # Never launched before the central has it `starting`; retried while it is unreachable (outbox.py).
            await set_status_before_launch(central.client, job.jobId, job.jobPrivateKey, "starting", run_logger)
            infrastructure_id = await launcher.submit(request)
            JobDirectory(request.job_dir).record_launch(infrastructure_id)
        except Exception as error:
            known = (JobRefused, ConfigError, CentralError, LaunchError)
            reason = str(error) if isinstance(error, known) else f"{type(error).__name__}: {error}"
            reason = _redactor(job.jobPrivateKey if job else "")(reason)
            run_logger.error("Job %s not launched: %s", job_id, reason)
            if task_status is not None:
                task_status.started(f"{NOT_LAUNCHED}{job_id}")
            if central is not None and job is not None:
                await self._fail_at_central(central.client, job, reason, run_logger)
            await self._set_state(flow_run, Failed(message=reason))
            return DendroWorkerResult(identifier=job_id, status_code=0)

        if task_status is not None:
            task_status.started(infrastructure_id)
        run_logger.info("Job %s launched as %s", job_id, infrastructure_id)
        self._runs_task_group.start_soon(self._publish_job_card, flow_run, job, central.config.central_url,
                                         infrastructure_id)
        self._following.add(flow_run.id)
        await self._set_state(flow_run, Running())
        await self._follow_to_the_end(flow_run, job, central, launcher, infrastructure_id, configuration, run_logger)
        return DendroWorkerResult(identifier=infrastructure_id, status_code=0)

    async def _publish_job_card(self, flow_run: FlowRun, job: DendroJob, central_url: str,
                                infrastructure_id: str) -> None:
        """The run's link back to its Dendro job (job_card.py), off the launch's path."""
        try:
            await self.client.create_artifact(ArtifactCreate(
                key=job_card_key(job.jobId), type="markdown", flow_run_id=flow_run.id,
                description=f"Dendro job {job.jobId}",
                data=job_card(job, central_url, infrastructure_id)))
        except Exception as error:
            self.get_flow_run_logger(flow_run).warning("Job %s: no job card in Prefect: %s", job.jobId, error)

    async def setup(self) -> None:
        await super().setup()
        cache_reads(self.client)

    async def sync_with_backend(self) -> None:
        """Once the worker knows its pool, it also picks up flow runs as Prefect schedules them
        (pickup.py), besides its queries."""
        await super().sync_with_backend()
        if self._pickup is None and self._work_pool is not None:
            self._pickup = ScheduledRunPickup(self._work_pool.id, self._query_pool, self._logger)
            self._runs_task_group.start_soon(self._pickup.run)

    async def get_and_submit_flow_runs(self):
        """Every few polls, take up the jobs that a lost worker of this pool had launched."""
        if time.monotonic() - self._orphans_checked_at >= ORPHAN_CHECK_INTERVAL_SEC:
            self._orphans_checked_at = time.monotonic()
            try:
                await self._reattach_orphans()
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

    async def _reattach_orphans(self) -> None:
        """Take up the runs of this pool that a lost worker left behind. Running (or cancelling) runs:
        their jobs still run (or have ended) on the infrastructure recorded on the run; follow them
        instead of launching again (a cancelling one is then killed by the follow). Pending runs: the
        worker was lost while launching them (see `_take_up_stranded`).
        Running runs are read only when a worker has newly gone offline (or this one just started): a
        run becomes an orphan only then, and reading every running run each time would load the server;
        pending runs are few (the launches in flight) and are read every time."""
        workers = await self.client.read_workers_for_work_pool(self._work_pool_name)
        # A run recorded under this worker's name but not followed here is its predecessor's: a
        # worker restarted under its name need not wait for Prefect to see the old one offline.
        online = {w.name for w in workers if w.status and w.status.value == "ONLINE"} - {self.name}
        offline = {w.name for w in workers} - online
        newly_offline = self._offline_workers_seen is None or not offline <= self._offline_workers_seen
        states = [StateType.PENDING] + ([StateType.RUNNING, StateType.CANCELLING] if newly_offline else [])
        # Runs this worker handles now, or handled while the runs were read, are not orphans.
        busy = self._following | self._submitting_flow_run_ids
        runs = await self._pool_runs(states)
        busy = busy | self._following | self._submitting_flow_run_ids
        now = datetime.now(timezone.utc)
        for flow_run in runs:
            owner = (flow_run.labels or {}).get("prefect.worker.name")
            if flow_run.id in busy or owner in online or flow_run.state is None:
                continue
            if flow_run.state.type == StateType.PENDING:
                # A live worker labels a run as soon as it is Pending; one without a label is stranded
                # only once that has had time to happen.
                if owner is None and (now - flow_run.state.timestamp).total_seconds() < STRANDED_PENDING_SEC:
                    continue
                self._runs_task_group.start_soon(self._take_up_stranded, flow_run)
            elif _launched(flow_run):
                self._runs_task_group.start_soon(self._reattach, flow_run)
            else:
                continue
            self._following.add(flow_run.id)
        self._offline_workers_seen = offline

    async def _pool_runs(self, states: list[StateType]) -> list[FlowRun]:
        runs: list[FlowRun] = []
        while True:
            page = await self.client.read_flow_runs(
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self._work_pool_name])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=states))),
                limit=RUNS_PAGE, offset=len(runs),
            )
            runs.extend(page)
            if len(page) < RUNS_PAGE:
                return runs

    async def _take_up_stranded(self, flow_run: FlowRun) -> None:
        """A run left Pending by a worker lost while launching it. The central says how far the launch
        got: a job still pending was never launched (workers set it `starting` first), so the run goes
        back to the queue; a launched job is followed on the infrastructure recorded in its directory,
        and one launched without a record is failed with the reason, never launched twice."""
        run_logger = self.get_flow_run_logger(flow_run)
        job_id = str(flow_run.parameters.get("job_id", ""))
        try:
            flow_run = await self.client.read_flow_run(flow_run.id)
            if flow_run.state is None or flow_run.state.type != StateType.PENDING:
                return
            if _launched(flow_run):
                return await self._reattach(flow_run)
            configuration = await self._configuration(flow_run)
            central = self._central(configuration.config_file)
            document = (await central.unfinished(time.monotonic())).get(job_id)
            recorded = JobDirectory(self._job_dir(configuration, job_id)).recorded_launch()
            if document is not None and document.get("status") == "pending":
                run_logger.warning("Job %s: its worker was lost before launching it; back in the queue", job_id)
                await self.client.set_flow_run_state(
                    flow_run.id, Scheduled(message="Its worker was lost before launching it; back in the queue"),
                    force=True)
            elif recorded is not None:
                await self.client.update_flow_run(flow_run.id, infrastructure_pid=recorded)
                await self._reattach(flow_run.model_copy(update={"infrastructure_pid": recorded}))
            elif document is None:
                await self._set_state(flow_run, self._ended_unwatched(configuration, job_id))
            else:
                job = await self._fetch_job(central, job_id, statuses=("starting", "running"))
                reason = ("its worker was lost while launching it, before the launch was recorded; whether its "
                          "app started is unknown, so it is not launched again")
                run_logger.error("Job %s failed: %s", job_id, reason)
                await self._fail_at_central(central.client, job, reason, run_logger)
                await self._set_state(flow_run, Failed(message=reason))
        except Exception as error:
            run_logger.error("Cannot take up job %s left pending by a lost worker: %s", job_id, error)
        finally:
            self._following.discard(flow_run.id)

    async def _configuration(self, flow_run: FlowRun) -> DendroJobConfiguration:
        return await self.job_configuration.resolve_for_flow_run(
            flow_run, client=self.client, work_pool=self.work_pool, worker_name=self.name, worker_id=self.backend_id)

    async def _reattach(self, flow_run: FlowRun) -> None:
        run_logger = self.get_flow_run_logger(flow_run)
        infrastructure_id = flow_run.infrastructure_pid
        job_id = str(flow_run.parameters.get("job_id", ""))
        try:
            configuration = await self._configuration(flow_run)
            central = self._central(configuration.config_file)
            launcher = self.launcher(configuration)
            if (await central.unfinished(time.monotonic())).get(job_id) is None:
                await launcher.kill(infrastructure_id)
                await self._set_state(flow_run, self._ended_unwatched(configuration, job_id))
                return
            job = await self._fetch_job(central, job_id, statuses=("starting", "running"))
            await launcher.attach(infrastructure_id, self._launch_request(job, configuration, central.config, flow_run))
        except Exception as error:
            reason = f"cannot take up job {job_id} again after a worker restart: {error}"
            run_logger.error(reason)
            await self._set_state(flow_run, Crashed(message=reason))
            return
        run_logger.info("Job %s taken up again as %s after a worker restart", job_id, infrastructure_id)
        if flow_run.state is not None and flow_run.state.type == StateType.PENDING:
            await self._set_state(flow_run, Running())
        async with self._slots().held(await self._slots().acquire(flow_run, wait=False)):
            await self._follow_to_the_end(flow_run, job, central, launcher, infrastructure_id, configuration,
                                          run_logger)

    async def _follow_to_the_end(self, flow_run, job, central, launcher, infrastructure_id, configuration,
                                 run_logger) -> None:
        self._following.add(flow_run.id)
        try:
            final = await self._follow(flow_run, job, central, launcher, infrastructure_id, configuration, run_logger)
            await launcher.release(infrastructure_id)
            await self._set_state(flow_run, final)
        finally:
            self._following.discard(flow_run.id)

    def _ended_unwatched(self, configuration: DendroJobConfiguration, job_id: str) -> State:
        """A job that ended while no worker watched it: its key is gone with it, so the central cannot
        be asked; the dendro SDK's last word in the job's output says how it ended."""
        ending = None
        with contextlib.suppress(OSError):
            for line in JobDirectory(self._job_dir(configuration, job_id)).stdout.read_text().splitlines():
                if line.startswith("Job completed") or line.startswith(SDK_FAILURE_PREFIX):
                    ending = line
        if ending is None:
            return Cancelled(message=f"Job {job_id} ended at the central while no worker watched it")
        if ending.startswith("Job completed"):
            return Completed(message="The job completed while no worker watched it")
        return Failed(message=ending.removeprefix(SDK_FAILURE_PREFIX))

    async def kill_infrastructure(
        self, infrastructure_pid: str, configuration: DendroJobConfiguration, grace_seconds: int = 30
    ) -> None:
        """Prefect calls this for a run cancelled before it started."""
        launcher = self.launcher(configuration)
        await launcher.kill(infrastructure_pid)
        await launcher.release(infrastructure_pid)

    # --- launching ---------------------------------------------------------------------------------------------

    def _central(self, config_file: str) -> "CentralConnection":
        if config_file not in self._connections:
            self._connections[config_file] = CentralConnection(ComputeResourceConfig.read(config_file or None))
        return self._connections[config_file]

    async def _fetch_job(self, central: CentralConnection, job_id: str,
                         statuses: tuple[str, ...] = ("pending",)) -> DendroJob:
        """The job as the central has it now (a read shared with launches that ask at the same time)."""
        document = (await central.unfinished(time.monotonic() - central.max_age_sec)).get(job_id)
        if document is None:  # newer than the shared read, perhaps
            document = (await central.unfinished(time.monotonic())).get(job_id)
        if document is None:
            raise JobRefused(f"job {job_id} is not unfinished at the central (finished or deleted)")
        try:
            job = parse(DendroJob, document, f"job {job_id}")
        except ProtocolError as error:
            raise JobRefused(str(error)) from None
        if job.status not in statuses:
            raise JobRefused(f"job {job_id} is {job.status}, not {' or '.join(statuses)}")
        return job

    @staticmethod
    def _job_dir(configuration: DendroJobConfiguration, job_id: str) -> Path:
        return Path(configuration.job_root).resolve() / job_id

    def _launch_request(
        self, job: DendroJob, configuration: DendroJobConfiguration, config: ComputeResourceConfig,
        flow_run: FlowRun,
    ) -> LaunchRequest:
        if not configuration.app_executable:
            raise JobRefused(f"no app executable for processor {job.processorName}")
        env = {k: v for k, v in configuration.env.items() if v is not None and not k.startswith("PREFECT_")}
        env.update(job_environment(job.jobId, configuration.app_executable, config.central_url,
                                   configuration.time_limit_sec))
        return LaunchRequest(
            job_id=job.jobId,
            job_private_key=job.jobPrivateKey,
            app_name=configuration.app_name,
            app_image=configuration.app_image or None,
            app_executable=configuration.app_executable,
            env=env,
            num_cpus=configuration.num_cpus,
            num_gpus=configuration.num_gpus,
            memory_gb=configuration.memory_gb,
            time_limit_sec=configuration.time_limit_sec,
            job_dir=self._job_dir(configuration, job.jobId),
            batch_id=job.batchId,
            flow_run_id=str(flow_run.id),
            sdk_bin_dir=configuration.sdk_bin_dir,
        )

    # --- following a launched job ------------------------------------------------------------------------------

    def _the_watch(self) -> Watch:
        if self._watch is None:
            self._watch = Watch(self._cancel_requests, self.poll_interval_sec, self.central_interval_sec)
        return self._watch

    async def _cancel_requests(self, flow_run_ids: list) -> set:
        """The watched runs that were cancelled in Prefect, in pages the API serves in one call each."""
        cancelled = set()
        for start in range(0, len(flow_run_ids), RUNS_PAGE):
            page = flow_run_ids[start:start + RUNS_PAGE]
            runs = await self.client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=page),
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.CANCELLING, StateType.CANCELLED])),
                ),
                limit=RUNS_PAGE,
            )
            cancelled.update(run.id for run in runs)
        return cancelled

    async def _follow(self, flow_run, job, central, launcher, infrastructure_id, configuration, run_logger) -> State:
        client = central.client
        watched = WatchedJob(flow_run.id, job.jobId, infrastructure_id, launcher, central.statuses)
        watch = self._the_watch()
        watch.add(watched)
        started = time.monotonic()
        output = StreamedOutput(_redactor(job.jobPrivateKey), run_logger)
        ending: list = []  # [status at the central, since when] once the job ended there
        try:
            while True:
                observation = await watched.next_observation()
                output.log(await launcher.read_logs(infrastructure_id))
                infrastructure = observation.infrastructure
                if infrastructure is not None and infrastructure.phase != "running":
                    output.log(await launcher.read_logs(infrastructure_id))
                    job_dir = JobDirectory(self._job_dir(configuration, job.jobId))
                    return await self._ended(client, job, infrastructure, output, job_dir, run_logger)
                if observation.cancel_requested:
                    await launcher.kill(infrastructure_id)
                    await self._fail_at_central(client, job, "Job canceled: flow run cancelled in Prefect", run_logger)
                    return Cancelled(message="Cancelled in Prefect; the job was killed and failed at the central")
                stop = await self._stop_reason(observation, client, job, ending, output.sdk_failure is not None)
                if stop is not None:
                    await launcher.kill(infrastructure_id)
                    return Cancelled(message=stop)
                limit = self.job_time_limit(configuration)
                if limit is not None and time.monotonic() - started > limit + self.overrun_grace_sec:
                    await launcher.kill(infrastructure_id)
                    reason = f"Job timed out: exceeded its time limit of {limit:.0f} s and was killed"
                    await self._fail_at_central(client, job, reason, run_logger)
                    return Failed(message=reason)
        finally:
            watch.remove(watched)

    async def _stop_reason(self, observation: Observation, client, job, ending: list, app_failed: bool) -> str | None:
        """Why the job must be stopped though its infrastructure runs, or None. A job that ended at
        the central is given time to exit: long when its app reported the end (the SDK reports just
        before it exits), short for a failure its app did not report, which most likely came from
        elsewhere, though the app's report may lag behind in logs that arrive late (a cloud's)."""
        if not ending:
            if not observation.central_known or observation.central_status is not None:
                return None
            try:
                status = await anyio.to_thread.run_sync(client.get_job_status, job.jobId, job.jobPrivateKey)
            except CentralError as error:
                if not error.transient:
                    raise
                return None  # the central is down: ask again next round
            if status is None:
                return "The job was deleted at the central; its infrastructure was killed"
            ending[:] = [status, time.monotonic()]
        status, since = ending
        reported = status != "failed" or app_failed
        if time.monotonic() - since <= (EXIT_GRACE_SEC if reported else UNREPORTED_FAILURE_GRACE_SEC):
            return None
        if reported:
            return f"The job was {status} at the central but its app did not exit; it was killed"
        return "The job was failed at the central; its infrastructure was killed"

    async def _ended(self, client, job, infrastructure: InfrastructureState, output: "StreamedOutput",
                     job_dir: JobDirectory, run_logger) -> State:
        # The run's end depends on the job's status: an outage of the central is waited out.
        status = await until_central_answers(
            lambda _: client.get_job_status(job.jobId, job.jobPrivateKey),
            lambda error, _: run_logger.warning("Job %s ended; the central cannot say how yet (%s); asking again",
                                                job.jobId, error))
        if status == "completed":
            return Completed(message="The job completed at the central")
        if status == "failed":
            return Failed(message=output.failure(job.jobId, job_dir.last_app_lines(APP_LINES_ON_FAILURE)))
        if status is None:
            return Cancelled(message="The job was deleted at the central")
        if infrastructure.phase == "gone":
            reason = f"The job's infrastructure disappeared without a result ({infrastructure.reason or 'no reason given'})"
        elif infrastructure.exit_code is None and infrastructure.reason:
            reason = infrastructure.reason  # the infrastructure ended it (or never started it) and says why
        else:
            reason = f"The app exited with code {infrastructure.exit_code} without reporting a result"
            if infrastructure.reason:
                reason += f" ({infrastructure.reason})"
            if output.last_line:
                reason += f"; its last line: {output.last_line}"
        await self._fail_at_central(client, job, reason, run_logger)
        return Failed(message=reason)

    async def _fail_at_central(self, client, job, reason: str, run_logger) -> None:
        """Fail the job at the central with `reason`; while the central is unreachable the failure waits
        in this worker's outbox, retried in the background until the central takes it (outbox.py)."""
        if client is None or job is None:
            return
        await self._outbox.send(client, job.jobId, job.jobPrivateKey, "failed", reason, run_logger)

    async def _set_state(self, flow_run: FlowRun, state: State) -> None:
        try:
            await propose_state(self.client, state, flow_run_id=flow_run.id)
        except Abort as error:
            self.get_flow_run_logger(flow_run).warning("Prefect refused state %s: %s", state.type.value, error)


class StreamedOutput:
    """A job's output on its way into the flow-run log (secrets redacted), and what it says of the end."""

    def __init__(self, redact, run_logger) -> None:
        self._redact = redact
        self._logger = run_logger
        self.sdk_failure: str | None = None  # the dendro SDK's reason, from its "Job failed: ..." line
        self.last_line: str | None = None

    def log(self, lines: list[str]) -> None:
        for line in lines:
            line = self._redact(line)
            self._logger.info(line)
            self.last_line = line
            if SDK_FAILURE_PREFIX in line:
                self.sdk_failure = line.split(SDK_FAILURE_PREFIX, 1)[1].strip()

    def failure(self, job_id: str, app_lines: list[str]) -> str:
        """The reason of a job its app failed. The SDK says only "Error running job: return code 1"
        when the app raised; the cause is the app's own last line (an exception's), so that leads the
        run's state message, and the app's last lines end the run's log."""
        reason = self.sdk_failure or "The job failed at the central"
        app_lines = [self._redact(line) for line in app_lines]
        if not app_lines or not reason.startswith(SDK_EXIT_FAILURE):
            return reason
        self._logger.error("Job %s failed (%s); the app's last lines:\n%s", job_id, reason, "\n".join(app_lines))
        return f"{app_lines[-1]} ({reason})"


def _launched(flow_run: FlowRun) -> bool:
    """Whether the run records the infrastructure its job was launched on (not a refusal's id)."""
    return bool(flow_run.infrastructure_pid) and not flow_run.infrastructure_pid.startswith(NOT_LAUNCHED)


# Signed URLs (the central's and cloud stores' downloads) grant access until they expire: the dendro SDK
# prints them ("Downloading <url>"), so their signatures are redacted like keys.
SIGNATURE = re.compile(r"([?&](?:signature|x-amz-signature|x-amz-credential|x-amz-security-token|sig)=)[^&\s]+",
                       re.IGNORECASE)


def _redactor(secret: str):
    def redact(line: str) -> str:
        line = SIGNATURE.sub(rf"\1{REDACTED}", line)
        return line.replace(secret, REDACTED) if secret else line

    return redact
