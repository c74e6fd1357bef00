"""A Dendro job through Prefect on the local pool, as a plain process (container method `none`)."""

import json
import re
import time

import requests

from tests.conftest import FIXTURES, create_letter_count_job
from tests.stack import (
    cancel_flow_run,
    final_flow_run,
    finished_job,
    flow_runs_of_job,
    job_cards,
    job_directory_after_its_end,
    wait_for,
    wait_for_log,
)


def test_job_runs_to_completed_with_its_output_in_the_flow_run_logs(controller):
    job_id = create_letter_count_job(controller.admin, controller.resource_id, text="hello dendro world", letter="o")
    job = finished_job(controller.admin, job_id)
    assert job["status"] == "completed", job.get("error")
    assert json.loads(controller.admin.output(job_id, "output")) == {"letter": "o", "count": 3}
    flow_run = final_flow_run(job_id)
    assert flow_run.state.is_completed()
    assert flow_run.parameters == {"job_id": job_id}
    assert set(flow_run.tags) >= {f"job:{job_id}", "app:letter_count", "processor:letter_count",
                                  f"project:{job_id.split('.')[0]}", "run-method:local"}
    assert flow_run.name == f"letter_count/letter_count {job_id}"
    assert flow_run.job_variables["time_limit_sec"] == 60
    log = wait_for_log(flow_run.id, "letter_count: 'o' appears 3 times in 18 characters",
                       "(Job private key: [redacted])")
    # The SDK prints the input's signed download URL: its signature, a grant until it expires, is redacted.
    assert "&signature=[redacted]" in log and not re.search(r"signature=(?!\[redacted\])", log)
    assert "(Job private key: [redacted])" in (job_directory_after_its_end(controller, job_id) / "stdout.log").read_text()
    [card] = wait_for(lambda: job_cards(flow_run.id), f"the job card of flow run {flow_run.id}")
    assert card.startswith(f"# Dendro job {job_id}\n")
    project_page = f"{controller.admin.url}/project/{job['projectId']}"
    assert f"[Project {job['projectId']} in Dendro]({project_page})" in card
    assert f"<td>{job_id}</td><td>letter_count</td><td>completed</td>" in requests.get(project_page, timeout=10).text


def test_failing_app_fails_the_job_and_the_flow_run(controller):
    job_id = create_letter_count_job(controller.admin, controller.resource_id, letter="xx")
    job = finished_job(controller.admin, job_id)
    assert (job["status"], job["error"]) == ("failed", "Error running job: return code 1")  # the SDK's words
    flow_run = final_flow_run(job_id)
    assert flow_run.state.is_failed()
    # In Prefect the app's own last line leads: the exception that failed it.
    cause = "ValueError: letter must be one character, not 'xx'"
    assert flow_run.state.message == f"{cause} (Error running job: return code 1)"
    log = wait_for_log(flow_run.id, f"Job {job_id} failed (Error running job: return code 1); the app's last lines:")
    assert log.endswith(cause), log[-500:]


def test_job_over_its_time_limit_is_killed_and_failed(controller):
    job_id = create_letter_count_job(
        controller.admin, controller.resource_id, inputParameters=[{"name": "letter", "value": "o"},
                                                                   {"name": "delay_sec", "value": 120}],
        requiredResources={"numCpus": 1, "numGpus": 0, "memoryGb": 1, "timeSec": 2},
    )
    job = finished_job(controller.admin, job_id, timeout=60)
    assert job["status"] == "failed" and job["error"].startswith("Job timed out: ")
    flow_run = final_flow_run(job_id)
    assert flow_run.state.is_failed() and flow_run.state.message.startswith("Job timed out: ")
    assert job["timestampFinished"] - job["timestampStarted"] < 30


def test_cancelling_the_flow_run_kills_the_job_within_5_seconds(controller):
    job_id = create_letter_count_job(
        controller.admin, controller.resource_id, inputParameters=[{"name": "letter", "value": "o"},
                                                                   {"name": "delay_sec", "value": 120}],
    )
    wait_for(lambda: controller.admin.job(job_id)["status"] == "running", "the job to run")
    flow_run = flow_runs_of_job(job_id)[0]
    cancel_flow_run(flow_run.id)
    cancelled_at = time.time()
    job = finished_job(controller.admin, job_id, timeout=30)
    assert (job["status"], job["error"]) == ("failed", "Job canceled: flow run cancelled in Prefect")
    assert job["timestampFinished"] - cancelled_at < 5
    assert final_flow_run(job_id).state.is_cancelled()


def test_app_that_dies_without_reporting_is_failed_with_its_exit_code(controller):
    apps = controller.admin.resource(controller.resource_id)["apps"]
    crash = {"name": "crash", "specUri": (FIXTURES / "apps" / "crash" / "spec.json").as_uri()}
    controller.admin.set_apps(controller.resource_id, apps + [crash])
    spec = json.loads((FIXTURES / "apps" / "crash" / "spec.json").read_text())["processors"][0]
    job_id = create_letter_count_job(controller.admin, controller.resource_id, processorName="crash",
                                     processorSpec=spec, inputFiles=[], outputFiles=[], inputParameters=[])
    job = finished_job(controller.admin, job_id)
    reason = ("The app exited with code 3 without reporting a result; its last line: "
              "crash: exiting with code 3 before the SDK reports")
    assert (job["status"], job["error"]) == ("failed", reason)
    flow_run = final_flow_run(job_id)
    assert flow_run.state.is_failed() and flow_run.state.message == reason
    wait_for_log(flow_run.id, "crash: exiting with code 3 before the SDK reports")
