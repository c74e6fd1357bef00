"""The life of one job (workers/job_run.py) without a server: the end-of-job table, the grace a job gets to
exit once it ended at the central, and whole lives against an in-memory launcher, central and worker."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from types import SimpleNamespace
from uuid import uuid4

import pytest
from prefect.client.schemas.objects import FlowRun

from dendro_prefect.central_jobs import JobRefused
from dendro_prefect.protocol.client import CentralError
from dendro_prefect.protocol.models import DendroJob
from dendro_prefect.protocol.transport import ClaimRefused
from dendro_prefect.workers.base import DendroJobConfiguration
from dendro_prefect.workers.job_output import StreamedOutput, redactor
from dendro_prefect.workers.job_run import (
    CANCELLED_IN_PREFECT,
    EXIT_GRACE_SEC,
    UNREPORTED_FAILURE_GRACE_SEC,
    CentralEnding,
    JobRun,
    end_of_job,
)
from dendro_prefect.workers.launch import (
    InfrastructureRetrySetting,
    InfrastructureState,
    Launcher,
    LaunchError,
)
from dendro_prefect.workers.watch import Watch

JOB_ID = "proj1.abcdefgh"
LETTER_COUNT = json.loads((Path(__file__).parents[2] / "apps" / "letter_count" / "spec.json").read_text())["processors"][0]
KEY = "k3y-0f-the-job-0123456789abcdef"
LOG = logging.getLogger("job-run-test")


def output(*lines: str) -> StreamedOutput:
    streamed = StreamedOutput(redactor(KEY), LOG)
    streamed.log(list(lines))
    return streamed


EXITED_0 = InfrastructureState("exited", exit_code=0)
EXITED_1 = InfrastructureState("exited", exit_code=1)


@pytest.mark.parametrize("status, infrastructure, lines, app_lines, state, message, fail_at_central", [
    ("completed", EXITED_0, [], [], "COMPLETED", "The job completed at the central", None),
    ("failed", EXITED_1, ["Job failed: Error running job: return code 1"], ["ValueError: bad"], "FAILED",
     "ValueError: bad (Error running job: return code 1)", None),
    ("failed", EXITED_1, ["Job failed: Job timed out: 11 > 10 seconds"], ["working"], "FAILED",
     "Job timed out: 11 > 10 seconds", None),
    ("failed", EXITED_1, [], [], "FAILED", "The job failed at the central", None),
    (None, EXITED_0, [], [], "CANCELLED", "The job was deleted at the central", None),
    ("running", InfrastructureState("gone", reason="container not found"), [], [], "FAILED",
     "The job's infrastructure disappeared without a result (container not found)", "same"),
    ("running", InfrastructureState("gone"), [], [], "FAILED",
     "The job's infrastructure disappeared without a result (no reason given)", "same"),
    ("starting", InfrastructureState("exited", reason="Slurm: OUT_OF_MEMORY"), [], [], "FAILED",
     "Slurm: OUT_OF_MEMORY", "same"),
    ("running", InfrastructureState("exited", exit_code=3), ["crash: bye"], [], "FAILED",
     "The app exited with code 3 without reporting a result; its last line: crash: bye", "same"),
    ("running", InfrastructureState("exited", exit_code=137, reason="out of memory"), [], [], "FAILED",
     "The app exited with code 137 without reporting a result (out of memory)", "same"),
    ("running", InfrastructureState("lost", reason="Slurm state NODE_FAIL", attempt=3), [], [], "FAILED",
     "The job's infrastructure was lost (Slurm state NODE_FAIL) on attempt 3; it was not started again "
     "(max_infrastructure_retries)", "same"),
])
def test_the_end_of_job_table(status, infrastructure, lines, app_lines, state, message, fail_at_central):
    ending = end_of_job(status, infrastructure, output(*lines), JOB_ID, app_lines)
    assert (ending.state.type.value, ending.state.message) == (state, message)
    assert ending.fail_at_central == (message if fail_at_central == "same" else None)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("status, reported, grace, reason", [
    ("completed", False, EXIT_GRACE_SEC, "The job was completed at the central but its app did not exit; it was killed"),
    ("failed", True, EXIT_GRACE_SEC, "The job was failed at the central but its app did not exit; it was killed"),
    ("failed", False, UNREPORTED_FAILURE_GRACE_SEC, "The job was failed at the central; its infrastructure was killed"),
])
def test_a_job_ended_at_the_central_gets_time_to_exit(status, reported, grace, reason):
    clock = Clock()
    ending = CentralEnding(clock)
    assert ending.stop_reason(reported) is None
    ending.ended(status)
    clock.now += grace
    assert ending.stop_reason(reported) is None
    ending.ended("completed")  # a later status does not restart the grace
    clock.now += 0.01
    assert ending.stop_reason(reported) == reason


# --- whole lives against fakes -----------------------------------------------------------------------------------


class FakeLauncher(Launcher):
    """An infrastructure whose job runs until the test says how it ends."""

    def __init__(self) -> None:
        self.state = InfrastructureState("running")
        self.submitted: list = []
        self.killed: list[str] = []
        self.released: list[str] = []
        self.lines: list[str] = []
        self.watched = asyncio.Event()  # set once the worker's watch asks for the job's state
        self.runs_again: list[str] = []
        self.ended_lines: list[str] = []  # what the infrastructure kept of a job's output
        self.refuse_run_again = False

    async def submit(self, request) -> str:
        self.submitted.append(request)
        return "fake:1"

    async def states(self, infrastructure_ids):
        self.watched.set()
        return {i: self.state for i in infrastructure_ids}

    async def read_logs(self, infrastructure_id):
        lines, self.lines = self.lines, []
        return lines

    async def kill(self, infrastructure_id):
        self.killed.append(infrastructure_id)
        self.state = InfrastructureState("exited", exit_code=-15)

    async def ended_output(self, infrastructure_id, job_id):
        assert not self.killed, "read before the kill, which may take the output with it"
        return list(self.ended_lines)

    async def run_again(self, infrastructure_id):
        if self.refuse_run_again:
            raise LaunchError("sbatch refused the job: QOSMaxSubmitJobPerUserLimit")
        self.runs_again.append(infrastructure_id)
        self.state = InfrastructureState("running")

    async def release(self, infrastructure_id):
        self.released.append(infrastructure_id)


class FakeCentralClient:
    retry_deadline = 1.0

    def __init__(self, central: "FakeCentral") -> None:
        self.central = central

    def set_job_status(self, job_id, job_private_key, status, error=None, retry_deadline=None):
        assert job_private_key == KEY
        self.central.history.append((status, error))
        self.central.status = status

    def get_job_status(self, job_id, job_private_key):
        return self.central.status


class FakeCentral:
    def __init__(self, status: str = "pending") -> None:
        self.status: str | None = status
        self.history: list = []  # the statuses set, with their errors
        self.client = FakeCentralClient(self)
        self.config = SimpleNamespace(central_url="http://central")

    def document(self) -> dict:
        return {"projectId": "proj1", "jobId": JOB_ID, "jobPrivateKey": KEY, "processorName": "letter_count",
                "status": self.status, "computeResourceId": "c" * 64, "inputFiles": [], "inputParameters": [],
                "outputFiles": [], "timestampCreated": 1.0, "userId": "github|1", "processorSpec": LETTER_COUNT}

    async def unfinished(self, newer_than):
        return {JOB_ID: self.document()} if self.status in ("pending", "starting", "running") else {}

    async def unfinished_job(self, job_id, newer_than):
        return (await self.unfinished(newer_than)).get(job_id)

    async def statuses(self, job_ids):
        return {j: (await self.unfinished(0)).get(j, {}).get("status") for j in job_ids}

    def environment(self, job, app_executable, time_limit_sec):
        return {"JOB_ID": job.jobId, "APP_EXECUTABLE": app_executable}

    def app_argv(self, app_executable):
        return [app_executable]

    async def job(self, job_id, statuses=("pending",)):
        document = (await self.unfinished(0)).get(job_id)
        if document is None or document["status"] not in statuses:
            raise JobRefused(f"job {job_id} is {self.status}, not {' or '.join(statuses)}")
        return DendroJob.model_validate(document)


class FakeWorker:
    """The worker's side of a job's life (job_run.WorkerServices), recording what it was asked."""

    overrun_grace_sec = 0.0

    def __init__(self, central: FakeCentral, launcher: FakeLauncher, cancelled: bool = False) -> None:
        self.central, self.fake_launcher, self.cancelled = central, launcher, cancelled
        self.states: list = []
        self.failed_at_central: list[str] = []
        self._watch = Watch(self._cancel_requests, interval=0.01, central_interval=0.0)

    def central_jobs(self, config_file):
        return self.central

    def launcher(self, configuration):
        return self.fake_launcher

    def job_time_limit(self, configuration):
        return configuration.time_limit_sec

    def watch(self):
        return self._watch

    async def _cancel_requests(self, flow_run_ids):
        return set(flow_run_ids) if self.cancelled else set()

    async def set_state(self, flow_run, state):
        self.states.append(state)

    async def fail_at_central(self, client, job, reason, run_logger):
        self.failed_at_central.append(reason)
        self.central.status = "failed"


class RetryingConfiguration(DendroJobConfiguration, InfrastructureRetrySetting):
    """The configuration of a pool whose infrastructure can be lost (Slurm, AWS Batch, Kubernetes)."""


def life(worker: FakeWorker, during=None, configuration_class=DendroJobConfiguration, **configuration) -> JobRun:
    """Launch the job and follow it to its end; `during(launcher, central)` runs once it is followed."""
    flow_run = FlowRun(id=uuid4(), flow_id=uuid4(), parameters={"job_id": JOB_ID})
    settings = dict(app_name="letter_count", app_executable="/app/main.py", job_root="/nonexistent-root")
    job_run = JobRun(flow_run, configuration_class(**{**settings, **configuration}), worker, LOG)

    async def live() -> None:
        if await job_run.launch() is None:
            return await job_run.refuse()
        following = asyncio.create_task(job_run.follow_to_the_end())
        await asyncio.wait_for(worker.fake_launcher.watched.wait(), 10)
        if during is not None:
            during(worker.fake_launcher, worker.central)
        await asyncio.wait_for(following, 10)

    asyncio.run(live())
    return job_run


def ends(launcher: FakeLauncher, central: FakeCentral, status: str, exit_code: int, *lines: str) -> None:
    central.status = status
    launcher.lines = list(lines)
    launcher.state = InfrastructureState("exited", exit_code=exit_code)


def test_a_job_is_set_starting_before_its_launch_and_completes():
    worker = FakeWorker(FakeCentral(), FakeLauncher())
    job_run = life(worker, lambda launcher, central: ends(launcher, central, "completed", 0, "Job completed"))
    assert worker.central.history[0] == ("starting", None)
    [request] = worker.fake_launcher.submitted
    assert request.env["JOB_ID"] == JOB_ID and KEY not in str(request.env)
    assert [s.type.value for s in worker.states] == ["COMPLETED"]
    assert worker.fake_launcher.released == ["fake:1"] and job_run.infrastructure_id == "fake:1"


def test_a_failed_app_fails_the_run_with_the_sdks_words_when_no_app_output_is_known():
    worker = FakeWorker(FakeCentral(), FakeLauncher())
    life(worker, lambda launcher, central: ends(launcher, central, "failed", 1,
                                                "Job failed: Error running job: return code 1"))
    assert worker.states[-1].message == "Error running job: return code 1"
    assert worker.failed_at_central == []  # the SDK told the central itself


def test_a_run_cancelled_in_prefect_kills_the_job_and_fails_it_at_the_central():
    worker = FakeWorker(FakeCentral(), FakeLauncher(), cancelled=True)
    life(worker)
    assert worker.fake_launcher.killed == ["fake:1"]
    assert worker.failed_at_central == [CANCELLED_IN_PREFECT]
    assert worker.states[-1].type.value == "CANCELLED"


def test_a_job_deleted_at_the_central_is_killed():
    worker = FakeWorker(FakeCentral(), FakeLauncher())
    life(worker, lambda launcher, central: setattr(central, "status", None))
    assert worker.fake_launcher.killed == ["fake:1"]
    assert worker.states[-1].message == "The job was deleted at the central; its infrastructure was killed"


def test_a_job_over_its_time_limit_is_killed_and_failed():
    worker = FakeWorker(FakeCentral(), FakeLauncher())
    life(worker, time_limit_sec=0.1)
    assert worker.fake_launcher.killed == ["fake:1"]
    reason = "Job timed out: exceeded its time limit of 0 s and was killed"
    assert worker.failed_at_central == [reason] and worker.states[-1].message == reason


def test_an_app_that_dies_unreported_is_failed_at_the_central_with_its_exit_code():
    worker = FakeWorker(FakeCentral(), FakeLauncher())
    life(worker, lambda launcher, central: ends(launcher, central, "running", 3, "crash: bye"))
    reason = "The app exited with code 3 without reporting a result; its last line: crash: bye"
    assert worker.failed_at_central == [reason] and worker.states[-1].message == reason


def lost_then(*ends_after):
    """During the job's life: its infrastructure is lost once, then (after it runs again) `ends(...)`."""
    def during(launcher: FakeLauncher, central: FakeCentral) -> None:
        central.status = "running"
        launcher.state = InfrastructureState("lost", reason="Slurm state NODE_FAIL", attempt=len(launcher.runs_again) + 1)

        async def after_run_again() -> None:
            while not launcher.runs_again and launcher.state.phase == "lost":
                await asyncio.sleep(0.01)
            if launcher.runs_again:
                ends(launcher, central, *ends_after)

        asyncio.get_running_loop().create_task(after_run_again())
    return during


def test_a_job_whose_infrastructure_was_lost_runs_again_and_completes():
    worker = FakeWorker(FakeCentral(), FakeLauncher())
    life(worker, lost_then("completed", 0, "Job completed"), RetryingConfiguration, max_infrastructure_retries=1)
    assert worker.fake_launcher.runs_again == ["fake:1"]
    assert worker.states[-1].type.value == "COMPLETED" and worker.failed_at_central == []


class LateRestartLauncher(FakeLauncher):
    """Rounds made while the job starts again (in another thread) still see the lost attempt: `stale_rounds` of
    them, after which the new attempt ends as `ends_after` says."""

    def __init__(self, stale_rounds: int) -> None:
        super().__init__()
        self.stale_rounds = stale_rounds

    async def run_again(self, infrastructure_id):
        self.runs_again.append(infrastructure_id)

    async def states(self, infrastructure_ids):
        if self.runs_again and self.state.phase == "lost":
            self.stale_rounds -= 1
            if self.stale_rounds < 0:
                self.state = InfrastructureState("running")
                self.on_running()
        return await super().states(infrastructure_ids)


def test_a_loss_seen_again_by_rounds_made_before_the_new_attempt_starts_it_only_once():
    launcher = LateRestartLauncher(stale_rounds=3)
    worker = FakeWorker(FakeCentral(), launcher)

    def during(launcher: LateRestartLauncher, central: FakeCentral) -> None:
        central.status = "running"
        launcher.state = InfrastructureState("lost", reason="Kubernetes: pod evicted", attempt=1)
        launcher.on_running = lambda: ends(launcher, central, "completed", 0, "Job completed")
    life(worker, during, RetryingConfiguration, max_infrastructure_retries=2)
    assert launcher.runs_again == ["fake:1"]
    assert worker.states[-1].type.value == "COMPLETED" and worker.failed_at_central == []


@pytest.mark.parametrize("configuration_class, retries", [(RetryingConfiguration, 0), (DendroJobConfiguration, None)])
def test_a_job_lost_without_retries_left_or_on_a_pool_that_has_none_fails_with_the_loss(configuration_class, retries):
    worker = FakeWorker(FakeCentral(), FakeLauncher())
    settings = {} if retries is None else {"max_infrastructure_retries": retries}
    life(worker, lost_then("completed", 0), configuration_class, **settings)
    reason = ("The job's infrastructure was lost (Slurm state NODE_FAIL) on attempt 1; it was not started again "
              "(max_infrastructure_retries)")
    assert worker.fake_launcher.runs_again == [] and worker.failed_at_central == [reason]
    assert worker.states[-1].message == reason


def test_a_job_the_infrastructure_refuses_to_run_again_fails_with_the_loss():
    worker = FakeWorker(FakeCentral(), FakeLauncher())
    worker.fake_launcher.refuse_run_again = True
    life(worker, lost_then("completed", 0), RetryingConfiguration)
    assert worker.states[-1].type.value == "FAILED" and "lost (Slurm state NODE_FAIL)" in worker.states[-1].message


@pytest.mark.parametrize("status, configuration, reason", [
    ("running", {}, f"job {JOB_ID} is running, not pending"),
    ("pending", {"app_executable": ""}, "no app executable for processor letter_count"),
])
def test_a_job_that_cannot_be_launched_is_refused_with_the_reason(status, configuration, reason):
    worker = FakeWorker(FakeCentral(status), FakeLauncher())
    job_run = life(worker, **configuration)
    assert job_run.refusal == reason
    assert worker.fake_launcher.submitted == []
    assert worker.states[-1].type.value == "FAILED" and worker.states[-1].message == reason


def test_a_refusal_by_the_central_of_starting_launches_nothing():
    central = FakeCentral()

    def refuse(*args, **kwargs):
        raise CentralError("Cannot set job status to starting when status is running", 500)

    central.client.set_job_status = refuse
    central.client.get_job_status = lambda *args: "running"
    worker = FakeWorker(central, FakeLauncher())
    job_run = life(worker)
    assert worker.fake_launcher.submitted == [] and "Cannot set job status to starting" in job_run.refusal


def test_a_job_another_compute_client_claimed_first_is_not_run_and_not_failed():
    """Dendro 0.6: the service gives `starting` to one compute client; the others' runs end Cancelled with the
    reason, the job untouched (its key is not even asked whether it is already starting: it is, but not ours)."""
    central = FakeCentral()

    def claimed(*args, **kwargs):
        raise ClaimRefused(f"job {JOB_ID} was claimed by compute client lab-2 first (HTTP 400: Job is not in "
                           "pending status)", 400)

    central.client.set_job_status = claimed
    central.client.get_job_status = lambda *args: "starting"
    worker = FakeWorker(central, FakeLauncher())
    job_run = life(worker)
    assert worker.fake_launcher.submitted == [] and worker.failed_at_central == []
    assert [s.type.value for s in worker.states] == ["CANCELLED"]
    assert worker.states[-1].message == f"Not run here: job {JOB_ID} was claimed by compute client lab-2 first " \
                                        "(HTTP 400: Job is not in pending status)"
    assert job_run.claimed_elsewhere


@pytest.mark.parametrize("kept, state, message", [
    (["Running job", "Job completed"], "COMPLETED", "The job completed while no worker watched it"),
    (["Job failed: ValueError: bad letter"], "FAILED", "ValueError: bad letter"),
    ([], "CANCELLED", f"Job {JOB_ID} ended at the central while no worker watched it"),
])
def test_a_job_that_ended_while_no_worker_watched_ends_as_its_infrastructure_says(kept, state, message):
    worker = FakeWorker(FakeCentral(status="completed"), FakeLauncher())
    worker.fake_launcher.ended_lines = kept
    flow_run = FlowRun(id=uuid4(), flow_id=uuid4(), parameters={"job_id": JOB_ID}, infrastructure_pid="fake:1")
    configuration = DendroJobConfiguration(app_name="letter_count", app_executable="/app/main.py",
                                           job_root="/nonexistent-root")
    assert asyncio.run(JobRun(flow_run, configuration, worker, LOG).take_up()) is False
    assert [(s.type.value, s.message) for s in worker.states] == [(state, message)]
    assert worker.fake_launcher.killed == ["fake:1"]
