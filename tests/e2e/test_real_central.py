"""dendro-prefect against the real Dendro 0.2.17 central, run through as a user would: the compute resource
registered with its resource code, its app set from a spec URI, jobs created through the central's own GUI
routes (one project held for approval after 10 pending jobs), a letter_count job to completed with its
output, a failing app, a job deleted while it runs, a job cancelled in Prefect. One controller (its own pool,
the real dendro SDK in the jobs) for the module, every job submitted at once; the controller polls only
every 600 s, so the central's own PubSub messages (through the configuration's `pubsub_origin`) drive it.

The central is the PyPI package's own FastAPI routers (`dendro.api_helpers`) under uvicorn in a venv of its
own (.venv-central), served by tests/real_central/serve.py with these patches, and no others:
1. its MongoDB client (motor's `AsyncIOMotorClient`, which clients/_get_mongo_client.py imports) is
   mongomock-motor's in-memory one: there is no MongoDB here; every query stays the routers' own.
2. its PubSub publish (`aiohttp` as clients/pubsub.py sees it) goes to the PubNub-compatible hub served in
   the same process instead of PubNub's host, which cannot be reached from here; the URL's path, the
   message, the keys and the check of the answer stay its own.
Set, not patched: its output bucket is its own "fsbucket" mode (OUTPUT_BUCKET_BASE_URL, FSBUCKET_SECRET_KEY)
on a minimal loopback fsbucket, the PubNub keys are the hub's, and the GUI user signs in with one of the
package's own mock GitHub tokens (`_create_mock_github_access_token`, made for its tests).

Where the stand-in and the real central differ is pinned in tests/integration/test_central_contract.py."""

from __future__ import annotations

import json
import time

import pytest

from dendro_prefect.controller.heartbeat import read_heartbeats
from dendro_prefect.protocol.client import CentralClient
from dendro_prefect.stand_in.admin_client import AdminError
from tests.conftest import create_letter_count_job, letter_count_spec, process_alive, wait_for
from tests.real_central.harness import running_real_central
from tests.secrets_scan import record_secret
from tests.stack import (
    cancel_flow_run,
    completed_letter_count,
    create_job_pool,
    final_flow_run,
    finished_job,
    flow_runs_of_job,
    infrastructure_id_of,
    letter_count_spec_uri,
    run,
    running_controller,
    wait_for_log,
)

POLL_SEC = 600.0  # no poll within the module: intake comes from the real central's PubSub messages
SLOW = [{"name": "letter", "value": "o"}, {"name": "delay_sec", "value": 120}]


@pytest.fixture(scope="module")
def real_central(tmp_path_factory):
    with running_real_central(tmp_path_factory.mktemp("real-central")) as central:
        yield central


@pytest.fixture(scope="module")
def controller(prefect_stack, real_central, tmp_path_factory, sdk_bin):
    """Registered at the real central, apps from a spec URI, through its GUI routes (running_controller);
    runMethod `slurm` parks jobs on a pool without workers, where they stay pending."""
    parking = create_job_pool("parking-real-central")
    with running_controller(prefect_stack, tmp_path_factory.mktemp("real-central-controller"), sdk_bin,
                            central=real_central, poll_interval_sec=POLL_SEC, deployments={"slurm": parking}) as ctl:
        yield ctl


@pytest.fixture(scope="module")
def jobs(controller) -> dict:
    """Every job of the module, created at once through the GUI routes: 10 parked jobs of one project, then a
    job of that project (held for approval), then one job of each case, in projects of their own."""
    gui = controller.admin
    project_id = gui.create_project("gate")
    gui.upload_file(project_id, "in.txt", b"hello dendro world")

    def in_gate_project(output: str, run_method: str) -> str:
        return gui.create_job({
            "computeResourceId": controller.resource_id, "projectId": project_id, "processorName": "letter_count",
            "inputFiles": [{"name": "input", "fileName": "in.txt"}],
            "outputFiles": [{"name": "output", "fileName": output}],
            "inputParameters": [{"name": "letter", "value": "o"}],
            "processorSpec": letter_count_spec()["processors"][0],
            "requiredResources": {"numCpus": 1, "numGpus": 0, "memoryGb": 1, "timeSec": 60}, "runMethod": run_method})

    created = {"parked": [in_gate_project(f"parked-{i}.json", "slurm") for i in range(10)],
               "held": in_gate_project("held.json", "local")}
    created["completed"] = create_letter_count_job(gui, controller.resource_id)
    created["failing"] = create_letter_count_job(gui, controller.resource_id, letter="xy")
    created["deleted"] = create_letter_count_job(gui, controller.resource_id, inputParameters=SLOW)
    created["cancelled"] = create_letter_count_job(gui, controller.resource_id, inputParameters=SLOW)
    client = CentralClient(gui.url, controller.resource_id, controller.config.private_key)
    for job in client.get_unfinished_jobs():
        record_secret(job["jobPrivateKey"], "job-key")
    return created


def test_registered_with_its_app_and_subscribed_to_the_central_pubsub(controller, jobs):
    resource = controller.admin.resource(controller.resource_id)
    assert resource["ownerId"].startswith("github|")
    assert [(a["name"], a["specUri"]) for a in resource["apps"]] == \
        [("letter_count", letter_count_spec_uri(controller.workdir))]
    assert [a["name"] for a in resource["spec"]["apps"]] == ["letter_count"]
    assert resource["spec"]["availableJobRunMethods"] == ["local"]

    def heartbeat():
        return next((h for h in run(read_heartbeats()) if h.compute_resource_id == controller.resource_id
                     and h.pubsub_connected), None)

    wait_for(heartbeat, "the controller's heartbeat to say PubSub is connected", timeout=60)


def test_a_letter_count_job_completes_with_its_output(controller, jobs):
    job_id = jobs["completed"]
    completed_letter_count(controller, job_id)
    job = controller.admin.job(job_id)
    intake = job["timestampStarting"] - job["timestampCreated"]
    print(f"\nreal central: created → starting {intake:.2f} s, → completed "
          f"{job['timestampFinished'] - job['timestampCreated']:.1f} s")
    # The module's controller polls once at its start and then every POLL_SEC: a job created later and taken in
    # well before the next poll came by the central's PubSub message (how soon is bench/'s, not a test's).
    assert intake < POLL_SEC / 2, "intake came from a poll, not from the central's PubSub message"
    assert job["outputFileIds"] == [job["outputFiles"][0]["fileId"]]


def test_a_failing_app_fails_the_job_and_its_flow_run(controller, jobs):
    job = finished_job(controller.admin, jobs["failing"])
    assert (job["status"], job["error"]) == ("failed", "Error running job: return code 1")
    flow_run = final_flow_run(jobs["failing"])
    cause = "ValueError: letter must be one character, not 'xy'"  # the app's last line leads in Prefect
    assert flow_run.state.is_failed() and flow_run.state.message == f"{cause} (Error running job: return code 1)"
    wait_for_log(flow_run.id, cause)


def test_a_job_deleted_while_it_runs_is_killed(controller, jobs):
    """The real central publishes nothing on a deletion: the worker's own watch of the job finds it gone."""
    job_id = jobs["deleted"]
    wait_for(lambda: controller.admin.job(job_id)["status"] == "running", "the job to run")
    pid = int(infrastructure_id_of(job_id, "process"))
    controller.admin.delete_job(job_id)
    deleted_at = time.monotonic()
    wait_for(lambda: not process_alive(pid), f"the app (pid {pid}) to be killed", timeout=30)
    print(f"\napp killed {time.monotonic() - deleted_at:.1f} s after the deletion")
    flow_run = final_flow_run(job_id, timeout=30)
    assert flow_run.state.is_cancelled() and "deleted at the central" in flow_run.state.message
    with pytest.raises(AdminError, match=f"HTTP 500: No job with ID {job_id}"):
        controller.admin.job(job_id)


def test_a_job_cancelled_in_prefect_is_failed_at_the_central(controller, jobs):
    job_id = jobs["cancelled"]
    wait_for(lambda: controller.admin.job(job_id)["status"] == "running", "the job to run")
    cancel_flow_run(flow_runs_of_job(job_id)[0].id)
    job = finished_job(controller.admin, job_id, timeout=30)
    assert (job["status"], job["error"]) == ("failed", "Job canceled: flow run cancelled in Prefect")
    assert final_flow_run(job_id).state.is_cancelled()


def test_a_job_held_for_approval_runs_once_approved(controller, jobs):
    """10 jobs of the project pending: the 11th is held, hidden from the controller, until the owner approves
    it (the central then publishes a status change). The parked jobs, deleted, lose their waiting runs."""
    held, parked = jobs["held"], jobs["parked"]
    assert controller.admin.job(held)["pendingApproval"] is True
    assert not any(controller.admin.job(job_id).get("pendingApproval") for job_id in parked)
    for job_id in parked:
        wait_for(lambda: flow_runs_of_job(job_id), f"the flow run of parked job {job_id}")
    # Jobs created after the held one have flow runs: the controller has read the unfinished jobs since.
    wait_for(lambda: flow_runs_of_job(jobs["completed"]), "a flow run of a job created after the held one")
    assert flow_runs_of_job(held) == []
    for job_id in parked:
        controller.admin.delete_job(job_id)
    controller.admin.approve_job(held)
    job = finished_job(controller.admin, held, timeout=90)
    assert job["status"] == "completed", job.get("error")
    assert json.loads(controller.admin.output(held, "output")) == {"letter": "o", "count": 3}
    for job_id in parked:
        assert final_flow_run(job_id, timeout=30).state.is_cancelled()
