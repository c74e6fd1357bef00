"""The life of one Dendro job on its flow run, readable in one place.

- `launch`: the job as the central has it, set `starting` there (never launched before that), handed to
  the backend, its infrastructure id recorded in the job directory; a job that cannot be launched is
  failed at the central and in Prefect with the one-line reason.
- `follow_to_the_end`: each round of the worker's shared watch, the job's output into the flow-run log,
  then, in this order: the infrastructure ended (`end_of_job` decides how the job ended); the run was
  cancelled in Prefect (killed, failed at the central); the job ended or was deleted at the central while
  its infrastructure runs (`CentralEnding` gives it time to exit, then it is killed); the time limit.
- `take_up`: a job launched by a worker that was lost is followed again on its recorded infrastructure.

What the job needs of its worker is the small `WorkerServices` protocol, so a fake serves the tests.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio
from prefect.client.schemas.objects import FlowRun
from prefect.states import Cancelled, Completed, Crashed, Failed, State

from ..central_jobs import CentralJobs, Client, Job, JobRefused
from ..config import ConfigError
from ..protocol.client import CentralError
from ..protocol.outbox import set_status_before_launch, until_central_answers
from ..protocol.transport import ClaimRefused
from .job_dir import JobDirectory
from .job_output import SDK_FAILURE_PREFIX, StreamedOutput, redactor
from .launch import InfrastructureState, Launcher, LaunchError, LaunchRequest
from .watch import Observation, Watch, WatchedJob

# The dendro SDK reports `completed` just before it exits; give a finished job this long to exit.
EXIT_GRACE_SEC = 15.0
# A failure the app did not report (yet) gets this long before the job is killed as failed elsewhere.
UNREPORTED_FAILURE_GRACE_SEC = 2.5
APP_LINES_ON_FAILURE = 5
CANCELLED_IN_PREFECT = "Job canceled: flow run cancelled in Prefect"


class WorkerServices(Protocol):
    """What one job's life needs of its worker."""

    overrun_grace_sec: float

    def central_jobs(self, config_file: str) -> CentralJobs: ...
    def launcher(self, configuration: Any) -> Launcher: ...
    def job_time_limit(self, configuration: Any) -> float | None: ...
    def watch(self) -> Watch: ...
    async def set_state(self, flow_run: FlowRun, state: State) -> None: ...
    async def fail_at_central(self, client: Client, job: Job, reason: str, run_logger) -> None: ...


def job_dir_of(configuration: Any, job_id: str) -> Path:
    return Path(configuration.job_root).resolve() / job_id


@dataclass(frozen=True)
class Ending:
    """How a job ended: the run's final state, and the reason to fail the job at the central with when
    the central does not know yet (None: it does)."""

    state: State
    fail_at_central: str | None = None


def end_of_job(central_status: str | None, infrastructure: InfrastructureState, output: StreamedOutput,
               job_id: str, app_lines: list[str]) -> Ending:
    """The job's infrastructure has ended: what the central says decides, the infrastructure explains
    an end the app did not report."""
    if central_status == "completed":
        return Ending(Completed(message="The job completed at the central"))
    if central_status == "failed":
        return Ending(Failed(message=output.failure(job_id, app_lines)))
    if central_status is None:
        return Ending(Cancelled(message="The job was deleted at the central"))
    if infrastructure.phase == "gone":
        reason = f"The job's infrastructure disappeared without a result ({infrastructure.reason or 'no reason given'})"
    elif infrastructure.phase == "lost":
        reason = (f"The job's infrastructure was lost ({infrastructure.reason}) on attempt {infrastructure.attempt}; "
                  "it was not started again (max_infrastructure_retries)")
    elif infrastructure.exit_code is None and infrastructure.reason:
        reason = infrastructure.reason  # the infrastructure ended it (or never started it) and says why
    else:
        reason = f"The app exited with code {infrastructure.exit_code} without reporting a result"
        if infrastructure.reason:
            reason += f" ({infrastructure.reason})"
        if output.last_line:
            reason += f"; its last line: {output.last_line}"
    return Ending(Failed(message=reason), fail_at_central=reason)


class CentralEnding:
    """A job that ended at the central while its infrastructure still runs is given time to exit: long
    when its app reported the end (the SDK reports just before it exits), short for a failure its app
    did not report, which most likely came from elsewhere, though the app's report may lag behind in
    logs that arrive late (a cloud's)."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self.status: str | None = None
        self._since = 0.0

    def ended(self, status: str) -> None:
        if self.status is None:
            self.status, self._since = status, self._clock()

    def stop_reason(self, app_reported_failure: bool) -> str | None:
        """Why the job must now be killed, or None while it has time left."""
        if self.status is None:
            return None
        reported = self.status != "failed" or app_reported_failure
        if self._clock() - self._since <= (EXIT_GRACE_SEC if reported else UNREPORTED_FAILURE_GRACE_SEC):
            return None
        if reported:
            return f"The job was {self.status} at the central but its app did not exit; it was killed"
        return "The job was failed at the central; its infrastructure was killed"


class JobRun:
    def __init__(self, flow_run: FlowRun, configuration: Any, services: WorkerServices, run_logger) -> None:
        self.flow_run = flow_run
        self.configuration = configuration
        self.services = services
        self.logger = run_logger
        self.job_id = str(flow_run.parameters.get("job_id", ""))
        self.job: Job | None = None
        self.central: CentralJobs | None = None
        self.launcher: Launcher | None = None
        self.infrastructure_id: str | None = flow_run.infrastructure_pid
        self.refusal = ""
        self.claimed_elsewhere = False  # the launch's claim (`starting`) went to another compute client

    @property
    def job_dir(self) -> JobDirectory:
        return JobDirectory(job_dir_of(self.configuration, self.job_id))

    def _connect(self) -> None:
        self.central = self.services.central_jobs(self.configuration.config_file)
        self.launcher = self.services.launcher(self.configuration)

    # --- launching ---------------------------------------------------------------------------------------------

    async def launch(self) -> str | None:
        """The infrastructure id of the launched job, or None when it could not be launched: `refusal`
        then says why, and `refuse` fails it."""
        try:
            self._connect()
            self.job = await self.central.job(self.job_id)
            request = self.request()
            # Never launched before the central has it `starting`; retried while it is unreachable (outbox.py).
            await set_status_before_launch(self.central.client, self.job_id, self.job.jobPrivateKey, "starting",
                                           self.logger)
            self.infrastructure_id = await self.launcher.submit(request)
            JobDirectory(request.job_dir).record_launch(self.infrastructure_id)
        except Exception as error:
            known = (JobRefused, ConfigError, CentralError, LaunchError)
            reason = str(error) if isinstance(error, known) else f"{type(error).__name__}: {error}"
            self.refusal = redactor(self.job.jobPrivateKey if self.job else "")(reason)
            self.claimed_elsewhere = isinstance(error, ClaimRefused)
            if self.claimed_elsewhere:
                self.logger.warning("Job %s not run here: %s", self.job_id, self.refusal)
            else:
                self.logger.error("Job %s not launched: %s", self.job_id, self.refusal)
            return None
        self.logger.info("Job %s launched as %s", self.job_id, self.infrastructure_id)
        return self.infrastructure_id

    async def refuse(self) -> None:
        """Fail a job that could not be launched, at the central (if it was reached) and in Prefect; a job another
        compute client claimed first is theirs to run: its run ends Cancelled, the job untouched."""
        if self.claimed_elsewhere:
            await self.services.set_state(self.flow_run, Cancelled(message=f"Not run here: {self.refusal}"))
            return
        if self.job is not None:
            await self._fail_at_central(self.refusal)
        await self.services.set_state(self.flow_run, Failed(message=self.refusal))

    def request(self) -> LaunchRequest:
        configuration, job = self.configuration, self.job
        if not configuration.app_executable:
            raise JobRefused(f"no app executable for processor {job.processorName}")
        env = {k: v for k, v in configuration.env.items() if v is not None and not k.startswith("PREFECT_")}
        env.update(self.central.environment(job, configuration.app_executable, configuration.time_limit_sec))
        return LaunchRequest(
            job_id=job.jobId, job_private_key=job.jobPrivateKey, app_name=configuration.app_name,
            app_image=configuration.app_image or None, app_executable=configuration.app_executable,
            app_argv=self.central.app_argv(configuration.app_executable), env=env,
            num_cpus=configuration.num_cpus, num_gpus=configuration.num_gpus, memory_gb=configuration.memory_gb,
            time_limit_sec=configuration.time_limit_sec, job_dir=job_dir_of(configuration, job.jobId),
            batch_id=job.batchId, flow_run_id=str(self.flow_run.id), sdk_bin_dir=configuration.sdk_bin_dir,
            central_url=self.central.config.central_url,
        )

    # --- taking a job up again -----------------------------------------------------------------------------------

    async def take_up(self) -> bool:
        """Follow again a job launched by a lost worker on the infrastructure recorded on the run; False
        when there is nothing to follow (its end is then set here)."""
        try:
            self._connect()
            if await self.central.unfinished_job(self.job_id, time.monotonic()) is None:
                ended = await self.ended_unwatched()  # before the kill, which may take the job's log with it
                await self.launcher.kill(self.infrastructure_id)
                await self.services.set_state(self.flow_run, ended)
                return False
            self.job = await self.central.job(self.job_id, statuses=("starting", "running"))
            await self.launcher.attach(self.infrastructure_id, self.request())
        except Exception as error:
            reason = f"cannot take up job {self.job_id} again after a worker restart: {error}"
            self.logger.error(reason)
            await self.services.set_state(self.flow_run, Crashed(message=reason))
            return False
        self.logger.info("Job %s taken up again as %s after a worker restart", self.job_id, self.infrastructure_id)
        return True

    async def ended_unwatched(self) -> State:
        """A job that ended while no worker watched it: its key is gone with it, so the central cannot
        be asked; the dendro SDK's last word in the job's output says how it ended, from the job directory,
        or from the infrastructure where the output stays there (a Batch log stream, a pod's log)."""
        lines: list[str] = []
        with contextlib.suppress(OSError):
            lines = self.job_dir.stdout.read_text().splitlines()
        if self.launcher is not None and self.infrastructure_id:
            try:
                lines += await self.launcher.ended_output(self.infrastructure_id, self.job_id)
            except LaunchError as error:
                self.logger.warning("Job %s: its infrastructure cannot say how it ended: %s", self.job_id, error)
        ending = None
        for line in lines:
            if line.startswith("Job completed") or line.startswith(SDK_FAILURE_PREFIX):
                ending = line
        if ending is None:
            return Cancelled(message=f"Job {self.job_id} ended at the central while no worker watched it")
        if ending.startswith("Job completed"):
            return Completed(message="The job completed while no worker watched it")
        return Failed(message=ending.removeprefix(SDK_FAILURE_PREFIX))

    # --- following it to the end ---------------------------------------------------------------------------------

    async def follow_to_the_end(self) -> None:
        final = await self._follow()
        await self.launcher.release(self.infrastructure_id)
        await self.services.set_state(self.flow_run, final)

    async def _follow(self) -> State:
        job, launcher, infrastructure_id = self.job, self.launcher, self.infrastructure_id
        watched = WatchedJob(self.flow_run.id, job.jobId, infrastructure_id, launcher, self.central.statuses)
        watch = self.services.watch()
        watch.add(watched)
        started = time.monotonic()
        output = StreamedOutput(redactor(job.jobPrivateKey), self.logger)
        at_central = CentralEnding()
        limit = self.services.job_time_limit(self.configuration)
        restarted = 0  # the last attempt started again: a `lost` of it or earlier is an observation made before
        try:
            while True:
                observation = await watched.next_observation()
                output.log(await launcher.read_logs(infrastructure_id))
                infrastructure = observation.infrastructure
                if infrastructure is not None and infrastructure.phase == "lost":
                    if infrastructure.attempt <= restarted:
                        continue
                    if await self._run_again(infrastructure):
                        restarted = infrastructure.attempt
                        continue
                if infrastructure is not None and infrastructure.phase != "running":
                    output.log(await launcher.read_logs(infrastructure_id))
                    return await self._ended(infrastructure, output)
                if observation.cancel_requested:
                    await launcher.kill(infrastructure_id)
                    await self._fail_at_central(CANCELLED_IN_PREFECT)
                    return Cancelled(message="Cancelled in Prefect; the job was killed and failed at the central")
                stop = await self._stop_reason(observation, at_central, output.sdk_failure is not None)
                if stop is not None:
                    await launcher.kill(infrastructure_id)
                    return Cancelled(message=stop)
                if limit is not None and time.monotonic() - started > limit + self.services.overrun_grace_sec:
                    await launcher.kill(infrastructure_id)
                    reason = f"Job timed out: exceeded its time limit of {limit:.0f} s and was killed"
                    await self._fail_at_central(reason)
                    return Failed(message=reason)
        finally:
            watch.remove(watched)

    async def _run_again(self, lost: InfrastructureState) -> bool:
        """The job's infrastructure was lost under it (not the job's fault): it starts again while the pool's
        `max_infrastructure_retries` last; False when they are spent or the new start failed."""
        retries = getattr(self.configuration, "max_infrastructure_retries", 0)
        if lost.attempt > retries:
            return False
        self.logger.warning("Job %s: %s; starting attempt %d (retry %d of %d)", self.job_id, lost.reason,
                            lost.attempt + 1, lost.attempt, retries)
        try:
            await self.launcher.run_again(self.infrastructure_id)
        except LaunchError as error:
            self.logger.error("Job %s could not start again: %s", self.job_id, error)
            return False
        return True

    async def _stop_reason(self, observation: Observation, at_central: CentralEnding,
                           app_reported_failure: bool) -> str | None:
        """Why the job must be stopped though its infrastructure runs, or None."""
        if at_central.status is None:
            if not observation.central_known or observation.central_status is not None:
                return None
            try:
                status = await anyio.to_thread.run_sync(self.central.client.get_job_status, self.job_id,
                                                        self.job.jobPrivateKey)
            except CentralError as error:
                if not error.transient:
                    raise
                return None  # the central is down: ask again next round
            if status is None:
                return "The job was deleted at the central; its infrastructure was killed"
            at_central.ended(status)
        return at_central.stop_reason(app_reported_failure)

    async def _ended(self, infrastructure: InfrastructureState, output: StreamedOutput) -> State:
        # The run's end depends on the job's status: an outage of the central is waited out.
        job = self.job
        status = await until_central_answers(
            lambda _: self.central.client.get_job_status(job.jobId, job.jobPrivateKey),
            lambda error, _: self.logger.warning("Job %s ended; the central cannot say how yet (%s); asking again",
                                                 job.jobId, error))
        ending = end_of_job(status, infrastructure, output, job.jobId, self.job_dir.last_app_lines(APP_LINES_ON_FAILURE))
        if ending.fail_at_central is not None:
            await self._fail_at_central(ending.fail_at_central)
        return ending.state

    async def _fail_at_central(self, reason: str) -> None:
        await self.services.fail_at_central(self.central.client, self.job, reason, self.logger)
