"""Dendro 0.6 jobs through the same Prefect machinery as 0.2's: a compute client registered at the stand-in's
service (its registration page), its subscription flow and a `local` pool worker running apps as plain processes
under the real dendro 0.6.22 SDK (.venv-sdk06). The service's rules are the stand-in's (stand_in/v06)."""

from __future__ import annotations

import signal
import time

import pytest

from dendro_prefect.embedded import prefect_worker
from dendro_prefect.protocol.client import CentralError
from dendro_prefect.protocol.v06.client import ServiceClient
from dendro_prefect.protocol.v06.registration import read_registration_code
from tests.stack import final_flow_run, flow_runs_of_job, prefect_api, wait_for, wait_for_log, worker_name
from tests.v06_service import SERVICE, running_compute_client

OUTAGE_SEC = 12.0  # an outage of the service's API (its PubSub stays up): the controller's retries reach 8 s apart


@pytest.fixture(scope="module")
def client(prefect_stack, tmp_path_factory, sdk06_bin):
    """A compute client of the stand-in's service, its controller and `local` worker running."""
    with running_compute_client(prefect_stack, tmp_path_factory.mktemp("v06"), sdk06_bin, "lab-prefect") as stack:
        yield stack


def test_a_job_runs_to_completed_with_its_output(client):
    running = client.running
    job_id = client.count_characters("hello dendro 0.6")
    job = client.finished(job_id)
    assert job["status"] == "completed", job.get("error")
    assert job["computeClientId"] == running.config.compute_client_id
    assert client.output(job) == {"num_characters": 16}
    flow_run = final_flow_run(job_id)
    assert flow_run.state.is_completed() and flow_run.parameters == {"job_id": job_id}
    assert {f"job:{job_id}", f"resource:{running.config.compute_client_id}", f"service:{SERVICE}",
            "processor:count_characters", "run-method:local"} <= set(flow_run.tags)
    wait_for_log(flow_run.id, f"Job {job_id} launched as process:", "(Job private key: [redacted])")


def test_a_job_whose_dependency_failed_is_not_run(client):
    running = client.running
    failing = client.count_characters(None)
    dependant = client.count_characters("never counted", job_dependencies=(failing,))
    assert client.finished(failing)["status"] == "failed"
    assert final_flow_run(failing).state.is_failed()
    # The service never offers a job whose dependency failed: it stays pending, and no flow run is made of it,
    # however many rounds pass (a later job, created after the failure, has its run once it is done).
    later = client.count_characters("after")
    assert client.finished(later)["status"] == "completed"
    assert running.admin.service_job(dependant)["status"] == "pending" and flow_runs_of_job(dependant) == []


def test_a_job_created_during_an_outage_of_the_service_runs_once_it_is_back(client):
    """While the service's API answers 503 a job is created (the admin side and PubSub stay up: its hint arrives
    and the controller cannot act on it). It stays pending and without a flow run through the outage, then
    completes with one flow run; the controller's flow run and the pool's worker kept running."""
    running = client.running
    service = ServiceClient(running.admin.url, running.config.compute_client_id, running.config.private_key,
                            retry_deadline=0)  # one request: the outage as the controller sees it
    running.admin.fail_requests(OUTAGE_SEC)
    ends = time.monotonic() + OUTAGE_SEC
    try:
        service.runnable_jobs()
    except CentralError as error:
        assert error.status_code == 503 and error.transient, error
    else:
        raise AssertionError("the service answered during its outage")
    job_id = client.count_characters("made in an outage")

    def outage_over() -> bool:
        if time.monotonic() >= ends - 1:
            return True
        assert running.admin.service_job(job_id)["status"] == "pending" and flow_runs_of_job(job_id) == []
        return False

    wait_for(outage_over, "the outage to end", OUTAGE_SEC + 5, interval=1.0)
    job = client.finished(job_id, timeout=120)
    assert job["status"] == "completed", job.get("error")
    assert len(flow_runs_of_job(job_id)) == 1 and final_flow_run(job_id).state.is_completed()
    assert running.processes[0].poll() is None, "the worker died"
    assert prefect_api().read_flow_run(running.subscription_run_id).state.is_running(), "the controller's run ended"


def test_a_job_another_compute_client_claims_first_is_not_run_here_and_not_failed(client, prefect_stack):
    """Its flow run waits (the pool's worker is stopped) while another compute client of the service claims the
    job; the restarted worker's claim is refused: the run ends Cancelled with why, the job stays theirs. The
    module's own worker does not come back: this test is the module's last."""
    running = client.running
    other = read_registration_code(running.admin.register_compute_client(SERVICE, "another-lab"))
    other_client = ServiceClient(running.admin.url, other.computeClientId, other.computeClientPrivateKey)
    worker = running.processes[0]  # gone at once (a SIGINT'd worker took over 60 s to stop on the loaded suite)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    job_id = client.count_characters("theirs", target_compute_client_ids=["*"])
    wait_for(lambda: flow_runs_of_job(job_id), "the job's flow run, waiting for a worker")
    other_client.set_job_status(job_id, running.admin.service_job(job_id)["jobPrivateKey"], "starting")
    with prefect_worker(prefect_stack.home, prefect_stack.api_url, running.pool, running.worker_type, running.workdir,
                        f"restarted-{running.pool}.log", running.worker_env, name=worker_name(running.pool)):
        flow_run = final_flow_run(job_id)
    assert flow_run.state.is_cancelled()
    assert flow_run.state.message.startswith(f"Not run here: job {job_id} was claimed by compute client another-lab")
    job = running.admin.service_job(job_id)
    assert (job["status"], job["computeClientId"], job.get("error")) == ("starting", other.computeClientId, None)
