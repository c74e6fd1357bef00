"""The AWS Batch launcher with boto3 clients answered by botocore's Stubber (no AWS, no moto server; every
request is checked against the service's own model): the submit_job request, job definitions, the
translation of Batch statuses into ours, why a job waits in RUNNABLE, logs and termination."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import boto3
import pytest
from botocore.stub import ANY, Stubber

from dendro_prefect.workers.aws_batch import AwsBatchJobConfiguration, AwsBatchWorker
from dendro_prefect.workers.aws_batch.credentials import AwsAccess, AwsClients
from dendro_prefect.workers.aws_batch.diagnosis import why_runnable
from dendro_prefect.workers.aws_batch.job_definitions import JobDefinitions, definition_name
from dendro_prefect.workers.aws_batch.job_keys import store_key
from dendro_prefect.workers.aws_batch.launcher import (
    UNFINISHED_BATCH_STATUSES,
    AwsBatchLauncher,
    job_name,
)
from dendro_prefect.workers.aws_batch.settings import AwsBatchJobSettings
from dendro_prefect.workers.launch import InfrastructureState, LaunchError
from tests.unit.fakes import JOB_KEY, launch_request

pytestmark = pytest.mark.anyio

DEFINITION_ARN = "arn:aws:batch:us-east-1:123456789012:job-definition/letter_count-dendro-jd:3"
JOB_ID = "4b6c8d2e-1f3a-4c5b-9d7e-0a1b2c3d4e5f"


def aws_client(service: str):
    return boto3.client(service, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


@dataclass
class Aws:
    batch: object
    logs: object
    secrets: object
    batch_stub: Stubber
    logs_stub: Stubber
    secrets_stub: Stubber
    submitted: list

    def clients(self) -> AwsClients:
        return AwsClients(self.batch, self.logs, self.secrets)


@pytest.fixture(scope="module")
def clients():
    """The clients, made once (botocore loads its service models for each new one); stubbed per test."""
    batch, logs, secrets = aws_client("batch"), aws_client("logs"), aws_client("secretsmanager")
    submitted: list = []
    batch.meta.events.register("before-parameter-build.batch.SubmitJob",
                               lambda params, **_: submitted.append(copy.deepcopy(params)))
    return batch, logs, secrets, submitted


@pytest.fixture
def aws(clients):
    batch, logs, secrets, submitted = clients
    submitted.clear()
    with Stubber(batch) as batch_stub, Stubber(logs) as logs_stub, Stubber(secrets) as secrets_stub:
        yield Aws(batch, logs, secrets, batch_stub, logs_stub, secrets_stub, submitted)
        for stub in (batch_stub, logs_stub, secrets_stub):
            stub.assert_no_pending_responses()


def launcher(aws: Aws, log_interval_sec: float = 5.0, **settings) -> AwsBatchLauncher:
    return AwsBatchLauncher(AwsBatchJobSettings(**settings), access=aws, log_interval_sec=log_interval_sec)


def expect_definition(aws: Aws, found: list[dict] = ()) -> None:
    aws.batch_stub.add_response("describe_job_definitions", {"jobDefinitions": list(found)},
                                {"jobDefinitionName": "letter_count-dendro-jd", "status": "ACTIVE"})


def definition(revision: int, image: str = "ghcr.io/lab/app:1") -> dict:
    return {"jobDefinitionName": "letter_count-dendro-jd", "revision": revision, "type": "container",
            "jobDefinitionArn": f"arn:aws:batch:us-east-1:123456789012:job-definition/letter_count-dendro-jd:{revision}",
            "containerProperties": {"image": image}}


async def submit(aws: Aws, tmp_path, settings: dict | None = None, **changes) -> tuple[AwsBatchLauncher, dict]:
    batch = launcher(aws, **(settings or {}))
    expect_definition(aws, [definition(3)])
    gpus = changes.get("num_gpus", 0) > 0
    aws.batch_stub.add_response("submit_job", {"jobId": JOB_ID, "jobName": "dendro-p1-abcdefgh"},
                                {"jobName": ANY, "jobQueue": "DendroBatchStack-job-queue-gpu" if gpus
                                 else "DendroBatchStack-job-queue-cpu", "jobDefinition": DEFINITION_ARN,
                                 "containerOverrides": ANY, "tags": ANY,
                                 **({"timeout": ANY} if changes.get("time_limit_sec", 1) else {})})
    assert await batch.submit(launch_request(tmp_path, **changes)) == f"aws-batch:{JOB_ID}"
    return batch, aws.submitted[-1]


def environment(request: dict) -> dict:
    return {item["name"]: item["value"] for item in request["containerOverrides"]["environment"]}


def resources(request: dict) -> dict:
    return {item["type"]: item["value"] for item in request["containerOverrides"]["resourceRequirements"]}


# --- submission ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_gpus, queue", [(0, "DendroBatchStack-job-queue-cpu"),
                                             (1, "DendroBatchStack-job-queue-gpu")])
async def test_cpu_and_gpu_jobs_go_to_their_queues(aws, tmp_path, num_gpus, queue):
    _, request = await submit(aws, tmp_path, num_gpus=num_gpus)
    assert request["jobQueue"] == queue


@pytest.mark.parametrize("num_cpus, memory_gb, num_gpus, fraction, expected", [
    (2, 4.0, 0, 0.9, {"VCPU": "2", "MEMORY": "3686"}),
    (0, 1.0, 0, 1.0, {"VCPU": "1", "MEMORY": "1024"}),
    (1, 0.01, 0, 0.9, {"VCPU": "1", "MEMORY": "128"}),  # Batch's smallest
    (8, 60.0, 2, 0.9, {"VCPU": "8", "MEMORY": "55296", "GPU": "2"}),
])
async def test_resource_requirements_come_from_the_jobs_resources(aws, tmp_path, num_cpus, memory_gb, num_gpus,
                                                                   fraction, expected):
    _, request = await submit(aws, tmp_path, {"memory_fraction": fraction}, num_cpus=num_cpus, memory_gb=memory_gb,
                              num_gpus=num_gpus)
    assert resources(request) == expected


@pytest.mark.parametrize("time_limit_sec, margin, expected", [(3600.0, 600.0, 4200), (10.0, 0.0, 60), (None, 600.0, None)])
async def test_the_attempt_timeout_is_the_time_limit_plus_the_margin_at_least_a_minute(aws, tmp_path, time_limit_sec,
                                                                                     margin, expected):
    _, request = await submit(aws, tmp_path, {"attempt_margin_sec": margin}, time_limit_sec=time_limit_sec)
    assert request.get("timeout", {}).get("attemptDurationSeconds") == expected


async def test_the_job_runs_its_executable_with_the_sdks_environment(aws, tmp_path):
    _, request = await submit(aws, tmp_path)
    assert request["jobName"] == "dendro-p1-abcdefgh"
    assert request["containerOverrides"]["command"] == [
        "/bin/sh", "-c", 'mkdir -p /tmp/working && cd /tmp/working && exec "$0" "$@"', "/app/main.py"]
    env = environment(request)
    assert env["JOB_ID"] == "p1.abcdefgh" and env["DENDRO_URL"] == "https://central.example"
    assert env["DENDRO_JOB_CLEANUP_DIR"] == "/tmp" and env["DENDRO_FORCE_STATUS_UPDATES"] == "0"
    assert "NVIDIA_DRIVER_CAPABILITIES" not in env


async def test_the_key_is_in_the_containers_environment_only(aws, tmp_path):
    _, request = await submit(aws, tmp_path, {"tags": {"team": "ephys"}})
    assert environment(request)["JOB_PRIVATE_KEY"] == JOB_KEY
    without_environment = {k: v for k, v in request.items() if k != "containerOverrides"}
    without_environment["command"] = request["containerOverrides"]["command"]
    assert JOB_KEY not in str(without_environment)
    assert request["tags"] == {"dendro-job-id": "p1.abcdefgh", "team": "ephys"}


EXECUTION_ROLE = "arn:aws:iam::123456789012:role/batch-execution"
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:dendro/job/p1.abcdefgh-AbCdEf"
JOB_DEFINITION_ARN = "arn:aws:batch:us-east-1:123456789012:job-definition/dendro-job-p1-abcdefgh:1"


def expect_secret(aws: Aws) -> None:
    aws.secrets_stub.add_response("create_secret", {"ARN": SECRET_ARN, "Name": "dendro/job/p1.abcdefgh"}, {
        "Name": "dendro/job/p1.abcdefgh", "SecretString": JOB_KEY, "Description": ANY,
        "Tags": [{"Key": "dendro-job-id", "Value": "p1.abcdefgh"}]})
    aws.batch_stub.add_response("register_job_definition", {
        "jobDefinitionName": "dendro-job-p1-abcdefgh", "jobDefinitionArn": JOB_DEFINITION_ARN, "revision": 1}, {
        "jobDefinitionName": "dendro-job-p1-abcdefgh", "type": "container", "containerProperties": {
            "image": "ghcr.io/lab/app:1", "executionRoleArn": EXECUTION_ROLE,
            "secrets": [{"name": "JOB_PRIVATE_KEY", "valueFrom": SECRET_ARN}],
            "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "2048"}]}})


def expect_removal(aws: Aws) -> None:
    aws.secrets_stub.add_response("delete_secret", {"ARN": SECRET_ARN}, {
        "SecretId": "dendro/job/p1.abcdefgh", "ForceDeleteWithoutRecovery": True})
    aws.batch_stub.add_response("deregister_job_definition", {}, {"jobDefinition": JOB_DEFINITION_ARN})


async def submit_with_secret(aws: Aws, tmp_path, **settings) -> AwsBatchLauncher:
    batch = launcher(aws, execution_role_arn=EXECUTION_ROLE, **settings)
    expect_secret(aws)
    aws.batch_stub.add_response("submit_job", {"jobId": JOB_ID, "jobName": "dendro-p1-abcdefgh"}, {
        "jobName": ANY, "jobQueue": ANY, "jobDefinition": JOB_DEFINITION_ARN, "containerOverrides": ANY,
        "tags": ANY, "timeout": ANY})
    assert await batch.submit(launch_request(tmp_path)) == f"aws-batch:{JOB_ID}"
    return batch


@pytest.mark.parametrize("delivery", ["auto", "secrets-manager"])
async def test_with_an_execution_role_the_key_is_a_secret_of_the_job_removed_when_it_ends(aws, tmp_path, delivery):
    batch = await submit_with_secret(aws, tmp_path, job_key_delivery=delivery)
    assert "JOB_PRIVATE_KEY" not in environment(aws.submitted[-1]) and JOB_KEY not in str(aws.submitted[-1])
    assert await batch.read_logs(f"aws-batch:{JOB_ID}") == []  # no word on where the key is: where it should be
    expect_removal(aws)
    await batch.release(f"aws-batch:{JOB_ID}")


async def test_a_job_run_again_after_a_lost_host_keeps_its_secret_and_definition(aws, tmp_path):
    batch = await submit_with_secret(aws, tmp_path)
    aws.batch_stub.add_response("describe_jobs", {"jobs": [batch_job(
        "FAILED", statusReason="Host EC2 (instance i-0abc) terminated.", jobDefinition=JOB_DEFINITION_ARN)]},
        {"jobs": [JOB_ID]})
    await batch.states([f"aws-batch:{JOB_ID}"])
    aws.batch_stub.add_response("submit_job", {"jobId": "retry-1", "jobName": "dendro-p1-abcdefgh"}, {
        "jobName": ANY, "jobQueue": ANY, "jobDefinition": JOB_DEFINITION_ARN, "containerOverrides": ANY,
        "tags": ANY, "timeout": ANY})
    await batch.run_again(f"aws-batch:{JOB_ID}")
    assert "JOB_PRIVATE_KEY" not in environment(aws.submitted[-1])


async def test_a_restarted_worker_removes_the_secret_of_the_job_it_took_up(aws, tmp_path):
    batch = launcher(aws, execution_role_arn=EXECUTION_ROLE)
    aws.batch_stub.add_response("list_jobs", {"jobSummaryList": [{"jobId": JOB_ID, "jobName": "dendro-p1-abcdefgh"}]},
                                {"jobQueue": ANY, "filters": ANY})
    await batch.attach(f"aws-batch:{JOB_ID}", launch_request(tmp_path))
    aws.batch_stub.add_response("describe_jobs", {"jobs": [batch_job("SUCCEEDED", jobDefinition=JOB_DEFINITION_ARN)]},
                                {"jobs": [JOB_ID]})
    await batch.states([f"aws-batch:{JOB_ID}"])
    expect_removal(aws)
    await batch.release(f"aws-batch:{JOB_ID}")


async def test_a_refused_submission_leaves_no_secret(aws, tmp_path):
    expect_secret(aws)
    aws.batch_stub.add_client_error("submit_job", "ClientException", "JobQueue not found")
    expect_removal(aws)
    with pytest.raises(LaunchError, match="^AWS Batch submit_job failed"):
        await launcher(aws, execution_role_arn=EXECUTION_ROLE).submit(launch_request(tmp_path))


async def test_a_secret_whose_definition_cannot_be_registered_is_deleted(aws, tmp_path):
    aws.secrets_stub.add_response("create_secret", {"ARN": SECRET_ARN}, {
        "Name": ANY, "SecretString": JOB_KEY, "Description": ANY, "Tags": ANY})
    aws.batch_stub.add_client_error("register_job_definition", "ClientException", "not authorized to PassRole")
    aws.secrets_stub.add_response("delete_secret", {}, {"SecretId": "dendro/job/p1.abcdefgh",
                                                        "ForceDeleteWithoutRecovery": True})
    with pytest.raises(LaunchError, match="PassRole"):
        await launcher(aws, execution_role_arn=EXECUTION_ROLE, job_key_delivery="secrets-manager").submit(
            launch_request(tmp_path))


async def test_a_secret_left_by_an_earlier_submission_is_overwritten(aws):
    aws.secrets_stub.add_client_error("create_secret", "ResourceExistsException", "already exists")
    aws.secrets_stub.add_response("put_secret_value", {"ARN": SECRET_ARN}, {
        "SecretId": "dendro/job/p1.abcdefgh", "SecretString": JOB_KEY})
    assert store_key(aws.secrets, "p1.abcdefgh", JOB_KEY, {}) == SECRET_ARN


async def test_without_an_execution_role_auto_sends_the_key_in_the_overrides_and_says_so_once(aws, tmp_path):
    batch, request = await submit(aws, tmp_path)
    assert environment(request)["JOB_PRIVATE_KEY"] == JOB_KEY
    assert await batch.read_logs(f"aws-batch:{JOB_ID}") == [
        "AWS Batch: the job key travels in the Batch job's containerOverrides, readable with batch:DescribeJobs; "
        "set the pool's execution_role_arn to keep it in Secrets Manager"]
    assert await batch.read_logs(f"aws-batch:{JOB_ID}") == []
    await batch.release(f"aws-batch:{JOB_ID}")  # nothing to remove


async def test_where_secrets_manager_refuses_auto_falls_back_to_the_overrides_naming_why(aws, tmp_path):
    aws.secrets_stub.add_client_error("create_secret", "AccessDeniedException", "not authorized to CreateSecret")
    batch, request = await submit(aws, tmp_path, {"execution_role_arn": EXECUTION_ROLE})
    assert environment(request)["JOB_PRIVATE_KEY"] == JOB_KEY
    [line] = await batch.read_logs(f"aws-batch:{JOB_ID}")
    assert line.startswith("AWS Batch: the job key travels in the Batch job's containerOverrides, readable with "
                           "batch:DescribeJobs: Secrets Manager refused it (An error occurred (AccessDeniedException)")


async def test_secrets_manager_asked_for_and_refused_fails_the_launch(aws, tmp_path):
    aws.secrets_stub.add_client_error("create_secret", "AccessDeniedException", "not authorized to CreateSecret")
    with pytest.raises(LaunchError, match=r"^AWS Secrets Manager cannot keep the job key: .*AccessDenied"):
        await launcher(aws, execution_role_arn=EXECUTION_ROLE, job_key_delivery="secrets-manager").submit(
            launch_request(tmp_path))
    assert aws.submitted == []


async def test_secrets_manager_without_an_execution_role_is_a_clear_error(aws, tmp_path):
    with pytest.raises(LaunchError, match="^job_key_delivery secrets-manager needs the pool's execution_role_arn"):
        await launcher(aws, job_key_delivery="secrets-manager").submit(launch_request(tmp_path))


async def test_the_key_goes_in_the_overrides_without_a_word_where_the_pool_says_so(aws, tmp_path):
    batch, request = await submit(aws, tmp_path, {"execution_role_arn": EXECUTION_ROLE,
                                                  "job_key_delivery": "environment"})
    assert environment(request)["JOB_PRIVATE_KEY"] == JOB_KEY
    assert await batch.read_logs(f"aws-batch:{JOB_ID}") == []


async def test_gpu_jobs_see_the_drivers(aws, tmp_path):
    _, request = await submit(aws, tmp_path, num_gpus=1)
    assert environment(request)["NVIDIA_DRIVER_CAPABILITIES"] == "all"


async def test_a_lost_host_is_read_as_lost_and_run_again_as_a_new_batch_job_that_may_report_again(aws, tmp_path):
    batch, first = await submit(aws, tmp_path)
    assert environment(first)["DENDRO_FORCE_STATUS_UPDATES"] == "0" and "retryStrategy" not in first
    reason = "Host EC2 (instance i-0abc) terminated."
    aws.batch_stub.add_response("describe_jobs", {"jobs": [batch_job("FAILED", statusReason=reason)]},
                                {"jobs": [JOB_ID]})
    assert await batch.states([f"aws-batch:{JOB_ID}"]) == {
        f"aws-batch:{JOB_ID}": InfrastructureState("lost", None, f"AWS Batch: {reason}")}
    aws.batch_stub.add_response("submit_job", {"jobId": "retry-1", "jobName": "dendro-p1-abcdefgh"},
                                {"jobName": first["jobName"], "jobQueue": first["jobQueue"],
                                 "jobDefinition": DEFINITION_ARN, "containerOverrides": ANY, "tags": ANY,
                                 "timeout": ANY})
    await batch.run_again(f"aws-batch:{JOB_ID}")
    assert environment(aws.submitted[-1])["DENDRO_FORCE_STATUS_UPDATES"] == "1"
    aws.batch_stub.add_response("describe_jobs", {"jobs": [batch_job("RUNNING", jobId="retry-1")]},
                                {"jobs": ["retry-1"]})
    assert await batch.states([f"aws-batch:{JOB_ID}"]) == {f"aws-batch:{JOB_ID}": InfrastructureState("running")}


async def test_an_app_without_image_cannot_run_on_batch(aws, tmp_path):
    with pytest.raises(LaunchError, match="app letter_count has no appImage to run on AWS Batch"):
        await launcher(aws).submit(launch_request(tmp_path, app_image=None))


async def test_a_refused_submission_fails_the_launch_naming_the_call(aws, tmp_path):
    expect_definition(aws, [definition(3)])
    aws.batch_stub.add_client_error("submit_job", "ClientException", "JobQueue DendroBatchStack-job-queue-cpu not found")
    with pytest.raises(LaunchError, match="^AWS Batch submit_job failed: .*JobQueue DendroBatchStack-job-queue-cpu "
                                          "not found"):
        await launcher(aws).submit(launch_request(tmp_path))


@pytest.mark.parametrize("job_id, expected", [("p1.abcdefgh", "dendro-p1-abcdefgh"), ("a/b c", "dendro-a-b-c"),
                                              ("x" * 200, "dendro-" + "x" * 121)])
def test_batch_job_names_keep_to_the_characters_and_length_batch_allows(job_id, expected):
    assert job_name(job_id) == expected


# --- job definitions ----------------------------------------------------------------------------------------------


def test_the_newest_active_definition_of_the_apps_image_is_reused(aws):
    definitions = JobDefinitions(aws.batch, "{app_name}-dendro-jd", "", {}, {})
    expect_definition(aws, [definition(2), definition(5), definition(7, image="ghcr.io/lab/app:0")])
    assert definitions.arn_for("letter_count", "ghcr.io/lab/app:1").endswith(":5")
    assert definitions.arn_for("letter_count", "ghcr.io/lab/app:1").endswith(":5")  # remembered: no second call


def test_a_definition_is_registered_when_none_runs_the_apps_image(aws):
    definitions = JobDefinitions(aws.batch, "{app_name}-dendro-jd", "arn:aws:iam::123456789012:role/job",
                                 {"logConfiguration": {"logDriver": "awslogs"}}, {"team": "ephys"})
    expect_definition(aws, [definition(2, image="ghcr.io/lab/app:0")])
    aws.batch_stub.add_response("register_job_definition", {
        "jobDefinitionName": "letter_count-dendro-jd", "jobDefinitionArn": DEFINITION_ARN, "revision": 3}, {
        "jobDefinitionName": "letter_count-dendro-jd", "type": "container", "tags": {"team": "ephys"},
        "containerProperties": {
            "image": "ghcr.io/lab/app:1", "jobRoleArn": "arn:aws:iam::123456789012:role/job",
            "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "2048"}],
            "logConfiguration": {"logDriver": "awslogs"}}})
    assert definitions.arn_for("letter_count", "ghcr.io/lab/app:1") == DEFINITION_ARN


@pytest.mark.parametrize("pattern, app, expected", [
    ("{app_name}-dendro-jd", "letter_count", "letter_count-dendro-jd"),
    ("lab/{app_name}:v1", "spike.sorting", "lab-spike-sorting-v1"),
    ("{app_name}", "a" * 200, "a" * 128),
])
def test_definition_names_fill_in_the_app_in_the_characters_batch_allows(pattern, app, expected):
    assert definition_name(pattern, app) == expected


# --- states -------------------------------------------------------------------------------------------------------


def batch_job(status: str, **details) -> dict:
    return {"jobId": JOB_ID, "jobName": "dendro-p1-abcdefgh", "jobQueue": "DendroBatchStack-job-queue-cpu",
            "status": status, "startedAt": 1, "jobDefinition": DEFINITION_ARN, **details}


async def state_of(aws: Aws, job: dict | None, **settings) -> InfrastructureState:
    batch = launcher(aws, **settings)
    aws.batch_stub.add_response("describe_jobs", {"jobs": [job] if job else []}, {"jobs": [JOB_ID]})
    return (await batch.states([f"aws-batch:{JOB_ID}"]))[f"aws-batch:{JOB_ID}"]


@pytest.mark.parametrize("status", sorted(UNFINISHED_BATCH_STATUSES - {"RUNNABLE"}))
async def test_a_job_on_its_way_or_running_is_running(aws, status):
    assert await state_of(aws, batch_job(status)) == InfrastructureState("running")


async def test_a_succeeded_job_exited_with_zero(aws):
    assert await state_of(aws, batch_job("SUCCEEDED", container={"exitCode": 0})) == InfrastructureState("exited", 0)


@pytest.mark.parametrize("details, exit_code, reason", [
    (dict(statusReason="Essential container in task exited", container={"exitCode": 3}), 3,
     "AWS Batch status FAILED: Essential container in task exited"),
    (dict(statusReason="Job attempt duration exceeded timeout"), None,
     "AWS Batch status FAILED: Job attempt duration exceeded timeout"),
    (dict(statusReason="Essential container in task exited", container={"exitCode": 137, "reason": "OutOfMemoryError: "
                                                                         "Container killed due to memory usage"}),
     137, "AWS Batch status FAILED: Essential container in task exited; OutOfMemoryError: Container killed due to "
          "memory usage"),
    (dict(attempts=[{"container": {"exitCode": 2, "reason": "CannotInspectContainerError"}}]),  # from its last attempt
     2, "AWS Batch status FAILED: CannotInspectContainerError"),
    (dict(statusReason="Terminated by dendro-prefect"), None, "AWS Batch status FAILED: Terminated by dendro-prefect"),
    ({}, None, "AWS Batch status FAILED"),
])
async def test_a_failed_job_names_its_status_reason_exit_code_and_attempts(aws, details, exit_code, reason):
    assert await state_of(aws, batch_job("FAILED", **details)) == InfrastructureState("exited", exit_code, reason)


async def test_a_job_batch_no_longer_knows_is_gone(aws):
    assert await state_of(aws, None) == InfrastructureState("gone", reason="AWS Batch no longer knows the job")


async def test_one_describe_jobs_call_per_hundred_jobs(aws):
    batch = launcher(aws)
    ids = [f"job-{i:03d}" for i in range(250)]
    for start in (0, 100, 200):
        page = ids[start:start + 100]
        aws.batch_stub.add_response("describe_jobs", {"jobs": [dict(batch_job("RUNNING"), jobId=i) for i in page]},
                                    {"jobs": page})
    states = await batch.states([f"aws-batch:{i}" for i in ids])
    assert len(states) == 250 and {s.phase for s in states.values()} == {"running"}


async def test_a_failed_describe_is_one_line_naming_the_call(aws):
    batch = launcher(aws)
    aws.batch_stub.add_client_error("describe_jobs", "ThrottlingException", "Rate exceeded")
    with pytest.raises(LaunchError, match="^AWS Batch describe_jobs failed: .*Rate exceeded$"):
        await batch.states([f"aws-batch:{JOB_ID}"])


# --- RUNNABLE ------------------------------------------------------------------------------------------------------


def queue(state="ENABLED", status="VALID", reason=None, environments=("ce-spot",)) -> dict:
    return {"jobQueues": [{"jobQueueName": "q", "jobQueueArn": "arn:q", "state": state, "status": status,
                           "priority": 1, **({"statusReason": reason} if reason else {}),
                           "computeEnvironmentOrder": [{"order": i, "computeEnvironment": e}
                                                       for i, e in enumerate(environments)]}]}


def environment_of(name="ce-spot", state="ENABLED", status="VALID", reason=None, max_vcpus=256) -> dict:
    return {"computeEnvironmentName": name, "computeEnvironmentArn": f"arn:{name}", "state": state, "status": status,
            **({"statusReason": reason} if reason else {}),
            "computeResources": {"type": "SPOT", "maxvCpus": max_vcpus, "subnets": [], "instanceRole": "r"}}


def asks_for(vcpus: int) -> dict:
    return {"container": {"resourceRequirements": [{"type": "VCPU", "value": str(vcpus)}]}}


@pytest.mark.parametrize("answer_queue, environments, vcpus, expected", [
    (queue(), [environment_of()], 2, "its queue and compute environments look healthy: it waits for capacity "
                                     "(instances starting, or all vCPUs in use)"),
    (queue(state="DISABLED"), [environment_of()], 2, "job queue q is DISABLED/VALID"),
    (queue(status="INVALID", reason="CE not found"), [environment_of()], 2, "job queue q is ENABLED/INVALID "
                                                                            "(CE not found)"),
    (queue(), [environment_of(status="INVALID", reason="subnet gone")], 2,
     "compute environment ce-spot is ENABLED/INVALID (subnet gone)"),
    (queue(), [environment_of(max_vcpus=16)], 64,
     "the job asks for 64 vCPUs, more than compute environment ce-spot's maxvCpus 16"),
    (queue(state="DISABLED"), [environment_of(state="DISABLED")], 2,
     "job queue q is DISABLED/VALID; compute environment ce-spot is DISABLED/VALID"),
])
def test_why_a_job_waits_in_runnable_is_read_from_its_queue_and_compute_environments(aws, answer_queue, environments,
                                                                                   vcpus, expected):
    aws.batch_stub.add_response("describe_job_queues", answer_queue, {"jobQueues": ["q"]})
    aws.batch_stub.add_response("describe_compute_environments", {"computeEnvironments": environments},
                                {"computeEnvironments": ["ce-spot"]})
    assert why_runnable(aws.batch, "q", asks_for(vcpus)) == expected


def test_a_queue_without_compute_environments_is_named(aws):
    aws.batch_stub.add_response("describe_job_queues", queue(environments=()), {"jobQueues": ["q"]})
    assert why_runnable(aws.batch, "q", {}) == "job queue q has no compute environment"


def test_a_missing_queue_is_named(aws):
    aws.batch_stub.add_response("describe_job_queues", {"jobQueues": []}, {"jobQueues": ["q"]})
    assert why_runnable(aws.batch, "q", {}) == "its job queue q does not exist"


def test_when_aws_will_not_say_why_the_line_says_so(aws):
    aws.batch_stub.add_client_error("describe_job_queues", "AccessDeniedException", "not authorized")
    assert why_runnable(aws.batch, "q", {}).startswith("AWS did not say why (An error occurred (AccessDeniedException)")


async def test_a_job_runnable_past_the_warning_gets_one_log_line_saying_why(aws):
    batch = launcher(aws, runnable_warning_sec=0)
    job = dict(batch_job("RUNNABLE", jobQueue="q"), **asks_for(2))
    aws.batch_stub.add_response("describe_jobs", {"jobs": [job]}, {"jobs": [JOB_ID]})
    infrastructure_id = f"aws-batch:{JOB_ID}"
    assert await batch.states([infrastructure_id]) == {infrastructure_id: InfrastructureState("running")}  # a read
    aws.batch_stub.add_response("describe_job_queues", queue(state="DISABLED"), {"jobQueues": ["q"]})
    aws.batch_stub.add_response("describe_compute_environments", {"computeEnvironments": [environment_of()]},
                                {"computeEnvironments": ["ce-spot"]})
    assert await batch.read_logs(infrastructure_id) == [
        "AWS Batch: the job is RUNNABLE 0 s after it was submitted; job queue q is DISABLED/VALID"]
    aws.batch_stub.add_response("describe_jobs", {"jobs": [job]}, {"jobs": [JOB_ID]})
    assert await batch.states([infrastructure_id]) == {infrastructure_id: InfrastructureState("running")}
    assert await batch.read_logs(infrastructure_id) == []  # no second diagnosis


async def test_a_job_seen_runnable_once_is_timed_from_its_submission(aws):
    """A loaded worker may poll once in the job's stay in RUNNABLE: the wait counts from Batch's createdAt."""
    batch = launcher(aws, runnable_warning_sec=60)
    submitted_ms = int((time.time() - 90) * 1000)
    job = batch_job("RUNNABLE", jobQueue="q", createdAt=submitted_ms)
    aws.batch_stub.add_response("describe_jobs", {"jobs": [job]}, {"jobs": [JOB_ID]})
    await batch.states([f"aws-batch:{JOB_ID}"])
    aws.batch_stub.add_response("describe_job_queues", queue(state="DISABLED"), {"jobQueues": ["q"]})
    aws.batch_stub.add_response("describe_compute_environments", {"computeEnvironments": [environment_of()]},
                                {"computeEnvironments": ["ce-spot"]})
    assert await batch.read_logs(f"aws-batch:{JOB_ID}") == [
        "AWS Batch: the job is RUNNABLE 90 s after it was submitted; job queue q is DISABLED/VALID"]


async def test_a_job_runnable_shorter_than_the_warning_is_not_diagnosed(aws):
    assert await state_of(aws, batch_job("RUNNABLE"), runnable_warning_sec=300) == InfrastructureState("running")


# --- logs and termination ----------------------------------------------------------------------------------------


async def running_with_log(aws: Aws, **settings) -> tuple[AwsBatchLauncher, str]:
    batch = launcher(aws, **settings)
    aws.batch_stub.add_response("describe_jobs", {"jobs": [batch_job("RUNNING", container={
        "logStreamName": "letter_count-dendro-jd/default/abc"})]}, {"jobs": [JOB_ID]})
    await batch.states([f"aws-batch:{JOB_ID}"])
    return batch, f"aws-batch:{JOB_ID}"


def log_page(messages: list[str], token: str) -> dict:
    return {"events": [{"timestamp": 1, "message": m, "ingestionTime": 1} for m in messages],
            "nextForwardToken": token, "nextBackwardToken": "b"}


async def test_the_log_stream_is_read_page_by_page_from_where_it_got_to(aws):
    batch, infrastructure_id = await running_with_log(aws, log_interval_sec=0)
    stream = {"logGroupName": "/aws/batch/job", "logStreamName": "letter_count-dendro-jd/default/abc",
              "startFromHead": True}
    aws.logs_stub.add_response("get_log_events", log_page(["Starting\n", "Downloading"], "f1"), stream)
    aws.logs_stub.add_response("get_log_events", log_page([], "f1"), dict(stream, nextToken="f1"))
    assert await batch.read_logs(infrastructure_id) == ["Starting", "Downloading"]
    aws.logs_stub.add_response("get_log_events", log_page(["Job completed"], "f2"), dict(stream, nextToken="f1"))
    aws.logs_stub.add_response("get_log_events", log_page([], "f2"), dict(stream, nextToken="f2"))
    assert await batch.read_logs(infrastructure_id) == ["Job completed"]


async def test_a_running_jobs_log_is_read_at_most_every_log_interval(aws):
    batch, infrastructure_id = await running_with_log(aws, log_interval_sec=3600)
    aws.logs_stub.add_response("get_log_events", log_page([], "f1"))
    assert await batch.read_logs(infrastructure_id) == []
    assert await batch.read_logs(infrastructure_id) == []  # no second call within the interval


async def test_a_log_stream_not_there_yet_is_no_error_but_another_failure_is_logged(aws):
    batch, infrastructure_id = await running_with_log(aws, log_interval_sec=0)
    aws.logs_stub.add_client_error("get_log_events", "ResourceNotFoundException", "The specified log stream does "
                                                                                  "not exist.")
    assert await batch.read_logs(infrastructure_id) == []
    aws.logs_stub.add_client_error("get_log_events", "AccessDeniedException", "not authorized")
    (line,) = await batch.read_logs(infrastructure_id)
    assert line.startswith("AWS Batch: cannot read the job's log stream: An error occurred (AccessDeniedException)")


async def test_kill_terminates_the_batch_job_with_a_reason(aws):
    aws.batch_stub.add_response("terminate_job", {}, {
        "jobId": JOB_ID, "reason": "Stopped by dendro-prefect: the job was cancelled, failed or deleted"})
    await launcher(aws).kill(f"aws-batch:{JOB_ID}")
    aws.batch_stub.assert_no_pending_responses()  # terminate_job was called, with these parameters


# --- the worker's part -------------------------------------------------------------------------------------------


def test_the_worker_reuses_one_launcher_per_settings():
    worker = AwsBatchWorker(work_pool_name="batch-unit")
    configuration = AwsBatchJobConfiguration(region_name="us-east-1", app_image="app:1")
    assert worker.launcher(configuration) is worker.launcher(configuration.model_copy())
    other = worker.launcher(configuration.model_copy(update={"gpu_job_queue": "gpus"}))
    assert other is not worker.launcher(configuration) and other.settings.gpu_job_queue == "gpus"


@pytest.mark.parametrize("time_limit_sec, expected", [(None, None), (600.0, 1200.0)])
def test_the_worker_gives_batch_the_attempt_margin_before_it_kills_a_job_itself(time_limit_sec, expected):
    configuration = AwsBatchJobConfiguration(time_limit_sec=time_limit_sec, attempt_margin_sec=600.0)
    assert AwsBatchWorker(work_pool_name="batch-unit").job_time_limit(configuration) == expected


# --- credentials ---------------------------------------------------------------------------------------------------


@pytest.fixture
def no_aws_configuration(monkeypatch, tmp_path):
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))


def test_without_a_block_the_pools_region_and_boto3s_chain_make_the_clients(no_aws_configuration):
    batch, logs, secrets = AwsAccess(region_name="eu-west-1").clients()
    assert [c.meta.service_model.service_name for c in (batch, logs, secrets)] == ["batch", "logs", "secretsmanager"]
    assert batch.meta.region_name == logs.meta.region_name == secrets.meta.region_name == "eu-west-1"


def test_the_region_of_the_environment_serves_when_the_pool_sets_none(no_aws_configuration, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert AwsAccess().clients()[0].meta.region_name == "ap-south-1"


def test_no_region_anywhere_fails_the_launch_saying_where_to_set_it(no_aws_configuration):
    with pytest.raises(LaunchError, match="no AWS region: set region_name on the work pool or in the credentials "
                                          "block"):
        AwsAccess().clients()


async def test_a_restarted_worker_takes_up_the_latest_attempt_of_its_job(aws, tmp_path):
    batch = launcher(aws)
    summaries = [{"jobId": i, "jobName": "dendro-p1-abcdefgh", "createdAt": t}
                 for i, t in (("retry-2", 30), ("older-run", 5), (JOB_ID, 10), ("retry-1", 20))]
    aws.batch_stub.add_response("list_jobs", {"jobSummaryList": summaries}, {
        "jobQueue": "DendroBatchStack-job-queue-cpu", "filters": [{"name": "JOB_NAME", "values": ["dendro-p1-abcdefgh"]}]})
    await batch.attach(f"aws-batch:{JOB_ID}", launch_request(tmp_path))
    aws.batch_stub.add_response("describe_jobs", {"jobs": [batch_job("RUNNING", jobId="retry-2")]}, {"jobs": ["retry-2"]})
    assert await batch.states([f"aws-batch:{JOB_ID}"]) == {f"aws-batch:{JOB_ID}": InfrastructureState("running")}


async def test_a_job_that_ended_unwatched_is_read_from_its_log_stream(aws):
    stream = "letter_count-dendro-jd/default/abc"
    aws.batch_stub.add_response("describe_jobs", {"jobs": [batch_job("SUCCEEDED", container={
        "logStreamName": stream})]}, {"jobs": [JOB_ID]})
    aws.logs_stub.add_response("get_log_events", log_page(["Running job", "Job completed"], "f1"),
                               {"logGroupName": "/aws/batch/job", "logStreamName": stream, "startFromHead": True})
    aws.logs_stub.add_response("get_log_events", log_page([], "f1"), {
        "logGroupName": "/aws/batch/job", "logStreamName": stream, "startFromHead": True, "nextToken": "f1"})
    assert await launcher(aws).ended_output(f"aws-batch:{JOB_ID}", "p1.abcdefgh") == ["Running job", "Job completed"]
