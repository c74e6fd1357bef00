"""A Dendro 0.6 compute client's reading and planning against the stand-in's service (in process): the jobs it
is offered and has claimed (central_jobs.ComputeClientJobs) and their flow runs (controller/v06.py)."""

from __future__ import annotations

import json
import logging
from uuid import uuid4

import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.states import Cancelling, Running

from dendro_prefect.apps import AppSpecError
from dendro_prefect.central_jobs import ComputeClientJobs, JobRefused
from dendro_prefect.config import ComputeClientConfig, ConfigError, ResourceRoute, read_config
from dendro_prefect.controller.routing import DEFAULT_DEPLOYMENTS
from dendro_prefect.controller.v06 import ComputeClientController
from dendro_prefect.protocol.transport import ClaimRefused
from dendro_prefect.protocol.v06.models import ServiceJob
from tests.unit import test_stand_in_v06 as stand_in
from tests.unit.test_stand_in_v06 import SERVICE, Service, run_to

service = stand_in.service  # the fixture: a service of the stand-in with the hello_world app, served in process

pytestmark = pytest.mark.anyio


def compute_client(service: Service, name: str = "lab") -> ComputeClientConfig:
    client = service.client(name)
    return ComputeClientConfig(compute_client_id=client.compute_client_id,
                               compute_client_private_key=service.client_keys[client.compute_client_id],
                               compute_client_name=name, service_name=SERVICE, central_url=service.url,
                               default_job_run_method="slurm")


async def test_the_jobs_offered_and_claimed_and_one_the_slots_leave_out(service):
    config = compute_client(service)
    jobs = ComputeClientJobs(config)
    older, newer = service.job("a"), service.job("bb")
    offered = await jobs.unfinished(float("inf"))
    assert list(offered) == [newer]  # one default slot, which the newest job fills (the service's order)
    first, second = newer, older
    run_to(jobs.client, service, first, "starting")
    assert list(await jobs.unfinished(float("inf"))) == [first]  # claimed; the slot is taken: no offer
    # The second job is not offered while the slot is taken, but it has not ended: asked for by its id.
    assert (await jobs.unfinished_job(second, float("inf")))["jobId"] == second
    assert await jobs.statuses([first, second]) == {first: "starting", second: "pending"}
    job = await jobs.job(second)
    assert isinstance(job, ServiceJob) and job.jobPrivateKey == service.key(second)
    run_to(jobs.client, service, first, "running", "failed", error="boom")
    assert await jobs.unfinished_job(first, float("inf")) is None
    with pytest.raises(JobRefused, match="not unfinished at the central"):
        await jobs.job(first)
    env = jobs.environment(job, "/apps/hello/main.py", 600)
    assert env == {"PYTHONUNBUFFERED": "1", "JOB_ID": second, "COMPUTE_CLIENT_ID": config.compute_client_id,
                   "PROCESSOR_EXECUTABLE": "/apps/hello/main.py", "DENDRO_API_URL": service.url,
                   "JOB_TIMEOUT_SEC": "600"}
    assert config.private_key not in str(env)


async def test_a_jobs_flow_run_takes_its_processor_from_the_service_app(service):
    controller = ComputeClientController(compute_client(service), dict(DEFAULT_DEPLOYMENTS), logging.getLogger("t"))
    job_id = service.job("abc")
    job = await controller.jobs.job(job_id)
    plan = controller.plan(job)
    assert plan.deployment == DEFAULT_DEPLOYMENTS["slurm"] and plan.parameters == {"job_id": job_id}
    assert plan.job_variables == {"app_name": "hello_world", "app_image": None, "app_executable": "main.py",
                                  "num_cpus": job.requiredResources.numCpus, "num_gpus": 0,
                                  "memory_gb": job.requiredResources.memoryGb,
                                  "time_limit_sec": job.requiredResources.timeSec}
    assert f"resource:{controller.config.compute_client_id}" in plan.tags and f"service:{SERVICE}" in plan.tags
    assert job.jobPrivateKey not in plan.model_dump_json()
    unknown = job.model_copy(update={"jobDefinition": job.jobDefinition.model_copy(update={"appName": "nope"})})
    with pytest.raises(AppSpecError, match="app nope of service hello_world_service cannot be read"):
        controller.plan(unknown)
    assert controller.keep_message({"type": "newPendingJob", "serviceName": SERVICE, "jobId": job_id}) is not None
    assert controller.keep_message({"type": "newPendingJob", "serviceName": "other", "jobId": job_id}) is None
    assert not controller.needs_round(controller.keep_message(
        {"type": "jobStatusChanged", "serviceName": SERVICE, "jobId": job_id, "status": "running"}))
    assert controller.needs_round(controller.keep_message({"type": "pingComputeClients", "serviceName": SERVICE}))


async def test_a_job_canceled_at_the_service_is_not_run_and_its_running_flow_run_is_cancelled(service):
    controller = ComputeClientController(compute_client(service), dict(DEFAULT_DEPLOYMENTS), logging.getLogger("t"))
    waiting, started = service.job("w"), service.job("s")
    user_key = service.admin.service_user()["apiKey"]
    for job_id in (waiting, started):
        assert service.call("cancelJob", {"jobId": job_id}, user_key).status_code == 200
    jobs = [await controller.jobs.job(waiting), await controller.jobs.job(started)]
    assert [controller.wanted(job) for job in jobs] == [False, False]
    running = FlowRun(flow_id=uuid4(), name="its-run", state=Running())
    cancelling = FlowRun(flow_id=uuid4(), name="being-cancelled", state=Cancelling())
    assert controller.cancelled_at_central(jobs, {started: running}) == [
        (running, f"job {started} was canceled at the service")]
    assert controller.cancelled_at_central(jobs, {started: cancelling}) == []


async def test_a_job_another_compute_client_holds_is_theirs(service):
    ours, theirs = ComputeClientJobs(compute_client(service, "ours")), service.client("theirs")
    job_id = service.job("x")
    run_to(theirs, service, job_id, "starting")
    with pytest.raises(ClaimRefused, match=f"job {job_id} was claimed by compute client theirs first"):
        await ours.job(job_id)


@pytest.mark.parametrize("resources, run_method", [
    ({"numCpus": 2, "numGpus": 1, "memoryGb": 16, "timeSec": 3600}, "aws_batch"),  # a GPU: the first route
    ({"numCpus": 32, "numGpus": 0, "memoryGb": 64, "timeSec": 3600}, "slurm"),  # over the local bounds
    ({"numCpus": 4, "numGpus": 0, "memoryGb": 8, "timeSec": 86400 * 2}, "slurm"),  # too long for local
    ({"numCpus": 4, "numGpus": 0, "memoryGb": 8, "timeSec": 600}, "local"),
])
async def test_a_job_goes_to_the_pool_its_required_resources_are_routed_to(service, resources, run_method):
    config = compute_client(service).model_copy(update={
        "available_job_run_methods": ["local", "slurm", "aws_batch"], "default_job_run_method": "slurm",
        "resource_routes": [ResourceRoute(run_method="aws_batch", min_gpus=1),
                            ResourceRoute(run_method="local", max_cpus=8, max_memory_gb=16, max_time_sec=86400)]})
    controller = ComputeClientController(config, dict(DEFAULT_DEPLOYMENTS), logging.getLogger("t"))
    job_id = service.job("r", required_resources=resources)
    plan = controller.plan(await controller.jobs.job(job_id))
    assert (plan.run_method, plan.deployment) == (run_method, DEFAULT_DEPLOYMENTS[run_method])
    assert f"run-method:{run_method}" in plan.tags


def test_a_route_to_a_run_method_the_client_does_not_offer_is_a_one_line_error(tmp_path):
    path = tmp_path / "client.json"
    path.write_text(json.dumps({
        "protocol": "dendro-0.6", "compute_client_id": "c1", "compute_client_private_key": "k",
        "compute_client_name": "lab", "service_name": "s", "resource_routes": [{"run_method": "slurm", "min_gpus": 1}]}))
    with pytest.raises(ConfigError, match=r"resource_routes\[0\] routes to slurm, which is not in "
                                          r"available_job_run_methods \['local'\]") as raised:
        read_config(path)
    assert "\n" not in str(raised.value)
