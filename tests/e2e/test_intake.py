"""Intake: one flow run per job whatever arrives twice, and bad input failed with a one-line reason
while the controller keeps running."""

import logging

import pytest
from prefect.client.orchestration import get_client

from dendro_prefect.config import ComputeResourceConfig
from dendro_prefect.controller.rounds import ComputeResourceController
from dendro_prefect.controller.routing import plan_flow_run
from dendro_prefect.protocol.models import DendroJob, parse
from dendro_prefect.protocol.signing import generate_keypair, make_resource_code
from tests.conftest import create_letter_count_job, letter_count_spec
from tests.stack import (
    create_job_pool,
    final_flow_run,
    finished_job,
    flow_runs_of_job,
    intake,
    run,
    running_controller,
    wait_for_log,
)


def test_job_announced_twice_and_polled_again_has_one_flow_run_and_one_launch(controller):
    job_id = create_letter_count_job(controller.admin, controller.resource_id)
    announcement = {"type": "newPendingJob", "projectId": job_id.split(".")[0],
                    "computeResourceId": controller.resource_id, "jobId": job_id}
    controller.admin.publish(controller.resource_id, announcement)
    controller.admin.publish(controller.resource_id, announcement)
    assert finished_job(controller.admin, job_id)["status"] == "completed"
    flow_run = final_flow_run(job_id)
    # The job ran for seconds: the controller polled it (every 2 s) while it was pending and after.
    assert len(flow_runs_of_job(job_id)) == 1
    # (The worker sends its log lines in batches: the line may come after the job's end.)
    assert wait_for_log(flow_run.id, f"Job {job_id} launched as").count(f"Job {job_id} launched as") == 1


def test_restarted_controllers_reuse_the_flow_run_of_a_job(controller, tmp_path):
    """Fresh controllers (no memory of each other) meet the same pending job: the second finds its
    flow run in Prefect and creates none, and even a create that slips through (two controllers at
    once) gets the same run back from Prefect's idempotency key (the job id). The job is routed to a
    deployment on a pool without workers so that nothing runs it."""
    parking = create_job_pool("parking")
    resource_id, private_key = generate_keypair()
    controller.admin.approve(resource_id, make_resource_code(private_key))
    controller.admin.set_apps(resource_id, [{"name": "letter_count", "specUri": controller.admin.resource(
        controller.resource_id)["apps"][0]["specUri"]}])
    config = ComputeResourceConfig(compute_resource_id=resource_id, compute_resource_private_key=private_key,
                                   central_url=controller.admin.url)
    job_id = create_letter_count_job(controller.admin, resource_id)
    first, second = (ComputeResourceController(config, {"local": parking}, logging.getLogger("test")) for _ in range(2))
    for resource_controller in (first, second):
        run(resource_controller.load_apps())
    assert intake(first) == 1
    assert intake(second) == 0
    job = parse(DendroJob, controller.admin.job(job_id) | {"jobPrivateKey": "unused"}, "job")
    plan = plan_flow_run(job, second.catalog.for_processor("letter_count"), {"local": parking})

    async def submit_again() -> None:
        async with get_client() as client:
            assert await second._submit_batch(client, plan.deployment, [(job, plan)]) == 1

    run(submit_again())
    assert second.flow_runs[job_id] == first.flow_runs[job_id]
    assert [str(r.id) for r in flow_runs_of_job(job_id)] == [first.flow_runs[job_id]]


BAD_JOBS = [
    ("unknown processor", dict(processorName="no_such_processor",
                               processorSpec=dict(letter_count_spec()["processors"][0], name="no_such_processor")),
     "no app of this compute resource has processor no_such_processor"),
    ("no runMethod", dict(runMethod=None), "has no runMethod"),
    ("no deployment", dict(runMethod="kubernetes"),
     "no deployment dendro-job/no-such-deployment for run method kubernetes"),
]


@pytest.mark.parametrize("change, reason", [(c, r) for _, c, r in BAD_JOBS], ids=[i for i, _, _ in BAD_JOBS])
def test_a_job_that_cannot_run_is_failed_with_a_one_line_reason(controller, change, reason):
    job_id = create_letter_count_job(controller.admin, controller.resource_id, **change)
    job = finished_job(controller.admin, job_id, timeout=30)
    assert job["status"] == "failed" and reason in job["error"] and "\n" not in job["error"]
    assert flow_runs_of_job(job_id) == []
    wait_for_log(controller.subscription_run_id, f"Job {job_id} failed: ", reason)


def test_malformed_messages_and_a_broken_spec_leave_the_controller_running(controller):
    good_uri = controller.admin.resource(controller.resource_id)["apps"][0]["specUri"]
    controller.admin.publish(controller.resource_id, {"type": "newPendingJob", "jobId": 5})
    controller.admin.publish(controller.resource_id, ["not", "an", "object"])
    controller.admin.set_apps(controller.resource_id, [
        {"name": "letter_count", "specUri": good_uri},
        {"name": "broken", "specUri": "file:///nonexistent/spec.json"},
    ])
    orphan = create_letter_count_job(
        controller.admin, controller.resource_id, processorName="sorter",
        processorSpec=dict(letter_count_spec()["processors"][0], name="sorter"))
    job = finished_job(controller.admin, orphan, timeout=30)
    assert job["status"] == "failed"
    assert "no app of this compute resource has processor sorter (apps not loaded: broken: spec URI " \
           "file:///nonexistent/spec.json cannot be loaded: FileNotFoundError" in job["error"]
    good = create_letter_count_job(controller.admin, controller.resource_id)
    assert finished_job(controller.admin, good)["status"] == "completed"
    wait_for_log(controller.subscription_run_id, "malformed PubSub message: newPendingJob.projectId: Field required",
                 "App broken skipped: spec URI file:///nonexistent/spec.json cannot be loaded")
    assert parse(DendroJob, controller.admin.job(good) | {"jobPrivateKey": "x"}, "job").status == "completed"


def test_without_pubsub_the_controller_polls(prefect_stack, tmp_path, sdk_bin):
    """A central that answers mock-subscribe-key (as the original daemon's test mode) has no PubSub."""
    with running_controller(prefect_stack, tmp_path / "polling", sdk_bin, mock_pubsub=True,
                            poll_interval_sec=1.0) as controller:
        job_id = create_letter_count_job(controller.admin, controller.resource_id)
        assert finished_job(controller.admin, job_id)["status"] == "completed"
        wait_for_log(controller.subscription_run_id, "the central has none (mock-subscribe-key); polling only")

