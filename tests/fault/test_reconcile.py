"""Reconciliation with real parts (Prefect server, central stand-in, dendro-local workers, the dendro SDK):
every disagreement between the central and Prefect ends in one action, and no job is launched twice.

The module's controller routes runMethod `aws_batch` to a pool without workers, where runs wait
(Scheduled) for as long as a test needs; its `local` jobs run on workers the tests start and kill.
"""

import asyncio
import json
import os
import signal
from contextlib import contextmanager

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State
from prefect.states import Cancelled, Crashed, Pending, Running

from dendro_prefect.controller.reconcile import MAX_REQUEUES
from dendro_prefect.embedded import prefect_worker
from tests.conftest import FIXTURES, create_letter_count_job, process_alive
from tests.stack import (
    create_job_pool,
    final_flow_run,
    finished_job,
    flow_runs_of_job,
    infrastructure_id_of,
    letter_count_spec_uri,
    running_controller,
    set_state,
    wait_for,
    wait_for_log,
    worker_name,
)

PARKED = "aws_batch"  # routed to a pool without workers
SETTLE_SEC = 3.0


SLEEPER = FIXTURES / "apps" / "sleeper"


@pytest.fixture(scope="module")
def reconciling(prefect_stack, tmp_path_factory, sdk_bin):
    parking = create_job_pool("parking-reconcile")
    workdir = tmp_path_factory.mktemp("reconcile")
    apps = [{"name": "letter_count", "specUri": letter_count_spec_uri(workdir)},
            {"name": "sleeper", "specUri": (SLEEPER / "spec.json").as_uri()}]
    with running_controller(prefect_stack, workdir, sdk_bin, apps=apps, settle_sec=SETTLE_SEC,
                            deployments={PARKED: parking}) as controller:
        stop(controller.processes.pop())  # each test runs the pool's workers it needs
        yield controller


def stop(worker, sig=signal.SIGKILL) -> None:
    worker.send_signal(sig)
    worker.wait()


@contextmanager
def pool_worker(controller, prefect_stack):
    """The pool's worker, always under one name: a restarted one takes up its predecessor's jobs."""
    with prefect_worker(prefect_stack.home, prefect_stack.api_url, controller.pool, controller.worker_type,
                        controller.workdir, f"{controller.pool}.log", controller.worker_env,
                        name=worker_name(controller.pool)) as worker:
        yield worker


def the_flow_run(job_id):
    return wait_for(lambda: next(iter(flow_runs_of_job(job_id)), None), f"a flow run of job {job_id}")


def slow_job(controller, delay_sec: float = 120) -> str:
    return create_letter_count_job(controller.admin, controller.resource_id,
                                   inputParameters=[{"name": "letter", "value": "o"},
                                                    {"name": "delay_sec", "value": delay_sec}])


def sleeper_job(controller) -> str:
    """A job whose app has no SDK: it never reports and never stops by itself."""
    spec = json.loads((SLEEPER / "spec.json").read_text())["processors"][0]
    return create_letter_count_job(controller.admin, controller.resource_id, processorName="sleeper",
                                   processorSpec=spec, inputFiles=[], outputFiles=[], inputParameters=[])


def running_app(controller, prefect_stack, job_id: str | None = None, status: str = "running"):
    """A job (a slow letter_count by default) launched by a worker that is then SIGKILLed once the job
    is `status` at the central; returns the job id and the app's pid."""
    job_id = job_id or slow_job(controller)
    with pool_worker(controller, prefect_stack) as worker:
        wait_for(lambda: controller.admin.job(job_id)["status"] == status, f"the job to be {status}")
        pid = int(infrastructure_id_of(job_id, "process"))
        stop(worker)
    return job_id, pid


def test_a_waiting_run_of_a_job_deleted_at_the_central_is_cancelled(reconciling):
    job_id = create_letter_count_job(reconciling.admin, reconciling.resource_id, runMethod=PARKED)
    flow_run = the_flow_run(job_id)
    reconciling.admin.delete_job(job_id)
    assert final_flow_run(job_id, timeout=20).state.is_cancelled()
    wait_for_log(reconciling.subscription_run_id,
                 f"Flow run {flow_run.name} cancelled: job {job_id} is no longer unfinished at the central")


def test_a_pending_job_whose_flow_run_ended_is_not_launched_again(reconciling):
    job_id = create_letter_count_job(reconciling.admin, reconciling.resource_id, runMethod=PARKED)
    flow_run = the_flow_run(job_id)
    set_state(flow_run.id, Cancelled(message="cancelled in the UI"))
    job = finished_job(reconciling.admin, job_id, timeout=20)
    assert job["status"] == "failed"
    assert job["error"] == f"not launched again: its flow run {flow_run.name} was cancelled in Prefect"
    assert [r.id for r in flow_runs_of_job(job_id)] == [flow_run.id]


def test_a_running_job_whose_flow_run_crashed_is_failed_at_the_central(reconciling, prefect_stack):
    """The worker is lost and an admin marks the run crashed: the job is failed with the run's reason,
    its app (the SDK sees its job failed) stops, and no worker launches it again."""
    job_id, pid = running_app(reconciling, prefect_stack)
    flow_run = flow_runs_of_job(job_id)[0]
    set_state(flow_run.id, Crashed(message="worker lost"))
    job = finished_job(reconciling.admin, job_id, timeout=30)
    assert job["status"] == "failed"
    assert job["error"] == f"its flow run {flow_run.name} ended Crashed in Prefect: worker lost"
    with pool_worker(reconciling, prefect_stack):
        try:
            wait_for(lambda: not process_alive(pid), "the app to stop once its job failed", timeout=60)
        finally:
            if process_alive(pid):
                os.killpg(pid, signal.SIGKILL)
        assert len(flow_runs_of_job(job_id)) == 1


def test_a_job_deleted_while_its_worker_is_down_has_its_app_killed_by_the_next_worker(reconciling, prefect_stack):
    """An app without the SDK (which would stop itself once its job is gone) is left to the worker."""
    job_id, pid = running_app(reconciling, prefect_stack, sleeper_job(reconciling), status="starting")
    reconciling.admin.delete_job(job_id)
    # The controller cancels the run once the disagreement outlasts SETTLE_SEC; nobody kills the app yet.
    wait_for(lambda: flow_runs_of_job(job_id)[0].state.is_cancelling(), "the controller to cancel the run", 30)
    assert process_alive(pid)
    with pool_worker(reconciling, prefect_stack):
        wait_for(lambda: not process_alive(pid), "the restarted worker to kill the app", 30)
        flow_run = final_flow_run(job_id)
    assert flow_run.state.is_cancelled()


def test_a_job_that_completed_while_its_worker_was_down_ends_its_cancelling_run_completed(reconciling, prefect_stack):
    """The app completes its job while no worker follows it, and the controller, seeing the job ended, cancels its
    run. Prefect's rules take only Cancelled from Cancelling (anything else is refused without an error): the next
    worker sets the job's end over the cancel, and the run does not stay Cancelling for ever."""
    job_id, _pid = running_app(reconciling, prefect_stack, slow_job(reconciling, delay_sec=5))
    assert finished_job(reconciling.admin, job_id, timeout=60)["status"] == "completed"
    wait_for(lambda: flow_runs_of_job(job_id)[0].state.is_cancelling(), "the controller to cancel the run", 30)
    with pool_worker(reconciling, prefect_stack):
        flow_run = final_flow_run(job_id)
    assert flow_run.state.is_completed(), flow_run.state
    assert flow_run.state.message == "The job completed while no worker watched it"
    wait_for_log(flow_run.id, "The job ended as its run was being cancelled: Completed")


def test_a_job_whose_app_died_with_its_worker_is_failed_not_relaunched(reconciling, prefect_stack):
    job_id, pid = running_app(reconciling, prefect_stack)
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not process_alive(pid), "the app to die")
    with pool_worker(reconciling, prefect_stack):
        job = finished_job(reconciling.admin, job_id, timeout=60)
        flow_run = final_flow_run(job_id)
    assert job["status"] == "failed"
    assert "the app's process ended while no worker watched it" in job["error"]
    assert flow_run.state.is_failed()
    # The killed worker's last log lines died with it; the app's own output, read again from its
    # start by the next worker, shows one start of the app.
    log = wait_for_log(flow_run.id, f"Job {job_id} taken up again as process:{pid}")
    assert log.count(f"Running job {job_id}") == 1 and len(flow_runs_of_job(job_id)) == 1


def strand(flow_run_id, state: type[State] = Pending) -> None:
    """Put a run where a worker SIGKILLed before Prefect recorded its launch leaves it: Pending (lost
    between Prefect's Pending and the launch) or Running (lost between the worker's Running and Prefect's
    record of the launch, which is a call of its own), labelled with the pool worker's name, no
    infrastructure id on the run."""
    async def change() -> None:
        async with get_client() as client:
            flow_run = await client.read_flow_run(flow_run_id)
            await client.set_flow_run_state(flow_run_id, state(), force=True)
            await client.update_flow_run_labels(flow_run_id, {"prefect.worker.name": worker_name(flow_run.work_pool_name)})
            # (update_flow_run cannot clear it)
            await client.request("PATCH", "/flow_runs/{id}", path_params={"id": flow_run_id},
                                 json={"infrastructure_pid": None})

    asyncio.run(change())


def test_a_run_left_pending_before_its_launch_goes_back_to_the_queue_and_runs_once(reconciling, prefect_stack):
    job_id = create_letter_count_job(reconciling.admin, reconciling.resource_id)
    flow_run = the_flow_run(job_id)  # Scheduled: no worker of the pool runs yet
    strand(flow_run.id)
    with pool_worker(reconciling, prefect_stack):
        job = finished_job(reconciling.admin, job_id, timeout=60)
        log = wait_for_log(flow_run.id, "back in the queue", f"Job {job_id} launched as")
    assert job["status"] == "completed"
    assert log.count(f"Job {job_id} launched as") == 1 and len(flow_runs_of_job(job_id)) == 1


@pytest.mark.parametrize("recorded, state", [(True, Pending), (False, Pending), (True, Running)],
                         ids=["recorded-in-job-dir", "not-recorded", "running-recorded-in-job-dir"])
def test_a_job_launched_by_a_worker_lost_before_prefect_recorded_it(reconciling, prefect_stack, recorded, state):
    """Recorded in the job's directory only: the next worker follows the app to its end, whether the run
    was left Pending or Running. Recorded nowhere: the job is failed with the reason, never launched a
    second time."""
    # The app must outlive the worker's restart (seconds; tens of seconds on a loaded machine, where an app of
    # 10 s ended before it and was seen ended, not taken up): recorded, it ends by itself once taken up; not
    # recorded, it stops once its job is failed.
    job_id, pid = running_app(reconciling, prefect_stack, slow_job(reconciling, delay_sec=40 if recorded else 120))
    flow_run = flow_runs_of_job(job_id)[0]
    strand(flow_run.id, state)
    record = reconciling.workdir / "dendro-jobs" / job_id / "infrastructure_id"
    assert record.read_text() == f"process:{pid}"
    if not recorded:
        record.unlink()
    try:
        with pool_worker(reconciling, prefect_stack):
            job = finished_job(reconciling.admin, job_id, timeout=150)
            flow_run = final_flow_run(job_id)
            wait_for(lambda: not process_alive(pid), "the app to stop", timeout=60)
    finally:
        if process_alive(pid):
            os.killpg(pid, signal.SIGKILL)
    if recorded:
        assert job["status"] == "completed" and flow_run.state.is_completed()
        wait_for_log(flow_run.id, f"Job {job_id} taken up again as process:{pid}")
    else:
        assert job["status"] == "failed" and flow_run.state.is_failed()
        assert job["error"].startswith("its worker was lost while launching it, before the launch was recorded"), job
    assert len(flow_runs_of_job(job_id)) == 1


def test_a_run_that_crashed_before_its_launch_is_requeued_a_few_times(reconciling):
    """Prefect's own API can fail a worker before the launch (SQLite's "database is locked"): the
    job, still pending, was never launched, so its run goes back to the queue, up to MAX_REQUEUES times."""
    job_id = create_letter_count_job(reconciling.admin, reconciling.resource_id, runMethod=PARKED)
    flow_run = the_flow_run(job_id)
    for crash in range(1, MAX_REQUEUES + 1):
        set_state(flow_run.id, Crashed(message="database is locked"))
        wait_for(lambda: (r := flow_runs_of_job(job_id)[0]).state.is_scheduled() and r.state.message
                 == f"Requeued after a crash before its launch ({crash} of {MAX_REQUEUES})", f"requeue {crash}", 20)
        assert reconciling.admin.job(job_id)["status"] == "pending"
    set_state(flow_run.id, Crashed(message="database is locked"))
    job = finished_job(reconciling.admin, job_id, timeout=20)
    assert job["error"] == (f"not launched again: its flow run {flow_run.name} ended Crashed in Prefect: "
                            "database is locked")
    assert len(flow_runs_of_job(job_id)) == 1
