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
from prefect.states import Cancelled, Crashed

from dendro_prefect.embedded import prefect_worker
from tests.conftest import FIXTURES, create_letter_count_job
from tests.stack import (
    create_job_pool,
    final_flow_run,
    finished_job,
    flow_runs_of_job,
    infrastructure_id_of,
    letter_count_spec_uri,
    running_controller,
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


def set_state(flow_run_id, state) -> None:
    async def change() -> None:
        async with get_client() as client:
            await client.set_flow_run_state(flow_run_id, state, force=True)

    asyncio.run(change())


def the_flow_run(job_id):
    return wait_for(lambda: next(iter(flow_runs_of_job(job_id)), None), f"a flow run of job {job_id}")


def alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


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
            wait_for(lambda: not alive(pid), "the app to stop once its job failed", timeout=60)
        finally:
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)
        assert len(flow_runs_of_job(job_id)) == 1


def test_a_job_deleted_while_its_worker_is_down_has_its_app_killed_by_the_next_worker(reconciling, prefect_stack):
    """An app without the SDK (which would stop itself once its job is gone) is left to the worker."""
    job_id, pid = running_app(reconciling, prefect_stack, sleeper_job(reconciling), status="starting")
    reconciling.admin.delete_job(job_id)
    # The controller cancels the run once the disagreement outlasts SETTLE_SEC; nobody kills the app yet.
    wait_for(lambda: flow_runs_of_job(job_id)[0].state.is_cancelling(), "the controller to cancel the run", 30)
    assert alive(pid)
    with pool_worker(reconciling, prefect_stack):
        wait_for(lambda: not alive(pid), "the restarted worker to kill the app", 30)
        flow_run = final_flow_run(job_id, timeout=30)
    assert flow_run.state.is_cancelled()


def test_a_job_whose_app_died_with_its_worker_is_failed_not_relaunched(reconciling, prefect_stack):
    job_id, pid = running_app(reconciling, prefect_stack)
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), "the app to die")
    with pool_worker(reconciling, prefect_stack):
        job = finished_job(reconciling.admin, job_id, timeout=60)
        flow_run = final_flow_run(job_id, timeout=30)
    assert job["status"] == "failed"
    assert "the app's process ended while no worker watched it" in job["error"]
    assert flow_run.state.is_failed()
    # The killed worker's last log lines died with it; the app's own output, read again from its
    # start by the next worker, shows one start of the app.
    log = wait_for_log(flow_run.id, f"Job {job_id} taken up again as process:{pid}")
    assert log.count(f"Running job {job_id}") == 1 and len(flow_runs_of_job(job_id)) == 1
