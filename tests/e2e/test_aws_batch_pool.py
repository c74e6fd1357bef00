"""Dendro jobs as AWS Batch jobs, against moto's server (AWS cannot run here; see aws_stand_in.py): its
Batch backend runs each job as a real container of the letter_count image on this machine's docker
engine. Credentials come from a prefect-aws AwsCredentials block that points at moto. The pool names an
execution role, so the job keys travel as secrets of Secrets Manager (moto's)."""

import dataclasses
import json
import secrets
import time

import pytest
import requests
from prefect_aws import AwsClientParameters, AwsCredentials

from dendro_prefect.workers.aws_batch.diagnosis import why_runnable
from tests.conftest import create_letter_count_job
from tests.e2e.aws_stand_in import CPU_QUEUE, GPU_QUEUE, REGION, create_batch_environment, moto_server
from tests.secrets_scan import known_secrets, record_secret
from tests.stack import (
    APP_OUTLIVES_RESTART_SEC,
    IMAGE,
    cancel_running_job,
    final_flow_run,
    finished_job,
    flow_runs_of_job,
    infrastructure_id_of,
    letter_count_spec_uri,
    restart_worker_and_finish,
    running_controller,
    wait_for,
    wait_for_log,
)
from tests.v06_service import app_spec, running_compute_client

BLOCK = "moto-batch"
# Random (moto accepts any): the secrets scan looks for them everywhere, which "testing" would not allow.
AWS_ACCESS_KEY_ID = "AKIA" + secrets.token_hex(8).upper()
AWS_SECRET_ACCESS_KEY = secrets.token_urlsafe(30)


@pytest.fixture(scope="module")
def moto(tmp_path_factory, docker_client):
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield dataclasses.replace(server, execution_role=create_batch_environment(server))


@pytest.fixture(scope="module")
def pool_variables(moto) -> dict:
    """The pool's job variables: moto's queues and execution role, AWS access by the credentials block alone."""
    record_secret(AWS_ACCESS_KEY_ID, "aws-access-key-id")
    record_secret(AWS_SECRET_ACCESS_KEY, "aws-secret-access-key")
    AwsCredentials(aws_access_key_id=AWS_ACCESS_KEY_ID, aws_secret_access_key=AWS_SECRET_ACCESS_KEY, region_name=REGION,
                   aws_client_parameters=AwsClientParameters(endpoint_url=moto.url)).save(BLOCK, overwrite=True)
    return {"aws_credentials_block": BLOCK, "cpu_job_queue": CPU_QUEUE, "gpu_job_queue": GPU_QUEUE,
            "runnable_warning_sec": 1, "execution_role_arn": moto.execution_role}


def worker_env(workdir) -> dict:
    """Nothing but the block gives the worker AWS access."""
    no_credentials = str(workdir / "no-aws-credentials")
    return {"AWS_SHARED_CREDENTIALS_FILE": no_credentials, "AWS_CONFIG_FILE": no_credentials,
            "PREFECT_WORKER_HEARTBEAT_SECONDS": "2"}


@pytest.fixture(scope="module")
def batch_controller(prefect_stack, tmp_path_factory, sdk_bin, pool_variables):
    workdir = tmp_path_factory.mktemp("aws-batch")
    with running_controller(prefect_stack, workdir, sdk_bin, worker_type="dendro-aws-batch", run_method="aws_batch",
                            apps=[{"name": "letter_count", "specUri": letter_count_spec_uri(workdir, image=IMAGE)}],
                            job_variables=pool_variables, worker_env=worker_env(workdir)) as controller:
        yield controller


def batch_job(controller, **changes) -> str:
    return create_letter_count_job(controller.admin, controller.resource_id, runMethod="aws_batch", **changes)


def batch_id_of(job_id: str) -> str:
    return infrastructure_id_of(job_id, "aws-batch")


def no_secret_left(moto) -> None:
    wait_for(lambda: not moto.client("secretsmanager").list_secrets()["SecretList"], "the jobs' secrets deleted")


def described(moto, batch_id: str) -> dict:
    return moto.client("batch").describe_jobs(jobs=[batch_id])["jobs"][0]


def test_batch_job_completes_with_its_log_and_its_key_in_no_log(batch_controller, moto, prefect_stack):
    controller = batch_controller
    job_id = batch_job(controller, text="hello dendro world",
                       inputParameters=[{"name": "letter", "value": "o"}, {"name": "delay_sec", "value": 2}])
    batch_id = batch_id_of(job_id)
    batch = moto.client("batch")
    job = described(moto, batch_id)
    assert job["jobName"] == "dendro-" + job_id.replace(".", "-")
    assert job["jobQueue"].endswith(f"job-queue/{CPU_QUEUE}")
    assert job["timeout"] == {"attemptDurationSeconds": 60 + 600}
    environment = {e["name"]: e["value"] for e in job["container"]["environment"]}
    assert environment["JOB_ID"] == job_id and environment["APP_EXECUTABLE"] == "/app/main.py"
    assert "JOB_PRIVATE_KEY" not in environment
    # The key is the job's secret, named by its own job definition, which the execution role reads.
    [definition] = batch.describe_job_definitions(jobDefinitions=[job["jobDefinition"]])["jobDefinitions"]
    properties = definition["containerProperties"]
    assert properties["image"] == IMAGE and properties["executionRoleArn"] == moto.execution_role
    [secret] = properties["secrets"]
    assert secret["name"] == "JOB_PRIVATE_KEY" and ":secret:dendro/job/" in secret["valueFrom"]

    finished = finished_job(controller.admin, job_id)
    assert finished["status"] == "completed", finished.get("error")  # the container had its key
    assert controller.admin.output(job_id, "output") == b'{"letter": "o", "count": 3}'
    flow_run = final_flow_run(job_id)
    assert flow_run.state.is_completed()
    log = wait_for_log(flow_run.id, f"launched as aws-batch:{batch_id}", "Job completed")
    assert "containerOverrides" not in log  # no word of the key travelling in the open
    # Ended: the secret and the job's definition are gone; the key is in no answer of Batch.
    no_secret_left(moto)
    assert batch.describe_job_definitions(jobDefinitions=[job["jobDefinition"]])["jobDefinitions"][0]["status"] \
        == "INACTIVE"
    keys = [secret.value for secret in known_secrets() if secret.kind == "job-key"]  # from the central's store
    answers = json.dumps([batch.describe_jobs(jobs=[batch_id]), batch.describe_job_definitions()], default=str)
    worker_log = (prefect_stack.home / f"{controller.pool}.log").read_text(errors="replace")
    assert keys and not [key for key in keys if key in answers or key in log or key in worker_log]


def test_a_dendro_06_job_completes_as_a_batch_job(prefect_stack, tmp_path_factory, sdk06_bin, hello_world_image,
                                                  pool_variables, moto):
    """A compute client of a Dendro 0.6 service whose jobs go to this pool: the same job definition and secret as a
    0.2 job's, with the 0.6 environment and `python <executable>`, in the app's image with the dendro 0.6.22 SDK."""
    workdir = tmp_path_factory.mktemp("v06-aws-batch")
    with running_compute_client(prefect_stack, workdir, sdk06_bin, "lab-aws-batch",
                                app_spec(image=hello_world_image, executable="/app/main.py"), run_method="aws_batch",
                                worker_type="dendro-aws-batch", job_variables=pool_variables,
                                worker_env=worker_env(workdir)) as stack:
        job_id = stack.count_characters("counted on AWS Batch")
        environment = {e["name"]: e["value"] for e in described(moto, batch_id_of(job_id))["container"]["environment"]}
        assert environment["DENDRO_API_URL"] == stack.admin.url and "JOB_PRIVATE_KEY" not in environment
        job = stack.finished(job_id, timeout=120)
        assert job["status"] == "completed", job.get("error")
        assert stack.output(job) == {"num_characters": 20}
        assert final_flow_run(job_id).state.is_completed()
        no_secret_left(moto)


def test_failing_app_fails_the_job_with_its_reason(batch_controller):
    controller = batch_controller
    job_id = batch_job(controller, inputParameters=[{"name": "letter", "value": "xy"}])
    job = finished_job(controller.admin, job_id)
    assert job["status"] == "failed" and job["error"] == "Error running job: return code 1"  # the SDK's words
    assert b"letter must be one character, not 'xy'" in controller.admin.output(job_id, "_console_output")
    flow_run = final_flow_run(job_id)
    assert flow_run.state.is_failed() and flow_run.state.message == job["error"]


def test_gpu_job_goes_to_the_gpu_queue(batch_controller, moto):
    controller = batch_controller
    job_id = batch_job(controller, requiredResources={"numCpus": 2, "numGpus": 1, "memoryGb": 4, "timeSec": 300})
    job = described(moto, batch_id_of(job_id))
    assert job["jobQueue"].endswith(f"job-queue/{GPU_QUEUE}")
    environment = {e["name"]: e["value"] for e in job["container"]["environment"]}
    assert environment["NVIDIA_DRIVER_CAPABILITIES"] == "all"
    assert finished_job(controller.admin, job_id)["status"] == "completed"


@pytest.mark.parametrize("side", ["prefect", "central"])
def test_cancel_stops_the_batch_job_within_5_seconds(batch_controller, moto, side):
    """Cancelled in Prefect, the worker terminates the Batch job. Deleted at the central, the job is
    stopped by whichever notices first: the worker (terminate_job) or the dendro SDK in the container,
    which exits when its job is gone."""
    controller = batch_controller
    job_id = batch_job(controller, inputParameters=[{"name": "letter", "value": "o"}, {"name": "delay_sec", "value": 120}])
    batch_id = batch_id_of(job_id)
    started = cancel_running_job(controller, job_id, side)
    job = wait_for(lambda: (lambda j: j if j.get("statusReason") or j["status"] in ("SUCCEEDED", "FAILED") else None)(
        described(moto, batch_id)), "the Batch job to be stopped", timeout=10)
    assert time.monotonic() - started < 5
    wait_for(lambda: described(moto, batch_id)["status"] in ("SUCCEEDED", "FAILED"), "the Batch job to end")
    assert final_flow_run(job_id).state.is_cancelled()
    if side == "prefect":
        assert job["statusReason"].startswith("Stopped by dendro-prefect")
        assert finished_job(controller.admin, job_id)["error"] == "Job canceled: flow run cancelled in Prefect"


def test_a_job_waiting_in_runnable_gets_a_log_line_saying_why(batch_controller, moto):
    """moto's state manager holds each Batch job state for 4 s, so the job is RUNNABLE from 8 s after it was
    submitted, past the pool's runnable_warning_sec (1 s here); one poll in those 4 s is enough."""
    controller = batch_controller
    requests.post(f"{moto.url}/moto-api/state-manager/set-transition", timeout=10, json={
        "model_name": "batch::job", "transition": {"progression": "time", "seconds": 4}}).raise_for_status()
    try:
        job_id = batch_job(controller)
        batch_id_of(job_id)
        flow_run = flow_runs_of_job(job_id)[0]
        wait_for_log(flow_run.id, "AWS Batch: the job is RUNNABLE ", "its queue and compute environments "
                     "look healthy: it waits for capacity (instances starting, or all vCPUs in use)", timeout=90)
    finally:
        requests.post(f"{moto.url}/moto-api/state-manager/unset-transition", timeout=10,
                      json={"model_name": "batch::job"}).raise_for_status()
    assert finished_job(controller.admin, job_id)["status"] == "completed"


def test_a_queue_that_cannot_run_jobs_is_named_as_the_reason_a_job_waits(moto):
    """moto runs every job at once, so no job stays RUNNABLE there; the diagnosis the worker logs for one
    is read from moto's queue and compute environment all the same."""
    batch = moto.client("batch")
    batch.update_job_queue(jobQueue=GPU_QUEUE, state="DISABLED")
    try:
        reason = why_runnable(batch, GPU_QUEUE, {"container": {"resourceRequirements": [{"type": "VCPU", "value": "4"}]}})
    finally:
        batch.update_job_queue(jobQueue=GPU_QUEUE, state="ENABLED")
    assert reason == f"job queue {GPU_QUEUE} is DISABLED/VALID"
    assert why_runnable(batch, "no-such-queue", {}) == "its job queue no-such-queue does not exist"


def test_missing_credentials_block_fails_the_job_with_a_clear_reason(prefect_stack, tmp_path, sdk_bin, moto):
    with running_controller(prefect_stack, tmp_path / "no-block", sdk_bin, worker_type="dendro-aws-batch",
                            run_method="aws_batch",
                            apps=[{"name": "letter_count", "specUri": letter_count_spec_uri(tmp_path, image=IMAGE)}],
                            job_variables={"aws_credentials_block": "no-such-block"}) as controller:
        job_id = batch_job(controller)
        job = finished_job(controller.admin, job_id)
        assert job["status"] == "failed"
        assert job["error"].startswith("AWS credentials block 'no-such-block' cannot be loaded") and "\n" not in job["error"]
        assert final_flow_run(job_id).state.message == job["error"]


def test_restarted_worker_takes_up_a_running_batch_job_and_it_completes_once(batch_controller, moto, prefect_stack):
    """(Last in the module: the module's worker does not come back.)"""
    controller = batch_controller
    job_id = batch_job(controller, inputParameters=[{"name": "letter", "value": "o"}, {"name": "delay_sec", "value": APP_OUTLIVES_RESTART_SEC}])
    batch_id_of(job_id)
    restart_worker_and_finish(controller, prefect_stack, job_id, "aws-batch")
    submitted = moto.client("batch").list_jobs(jobQueue=CPU_QUEUE, filters=[
        {"name": "JOB_NAME", "values": ["dendro-" + job_id.replace(".", "-")]}])["jobSummaryList"]
    assert len(submitted) == 1
    # The worker that took the job up removed its secret at its end.
    no_secret_left(moto)
