"""The docker container method on the local pool: a real docker engine (scripts/test.sh starts one)
runs an image of the letter_count app built here (no registry is reachable: scripts/build-app-image.sh
builds it from a debootstrapped base and the dendro SDK's wheels), started by the worker with the
`docker run` command a Slurm batch script runs (workers/docker_cli.py), limits included."""

import json

import pytest

from dendro_prefect.workers.containers import JOB_LABEL
from tests.conftest import count_starts_app, create_count_starts_job, create_letter_count_job
from tests.stack import (
    APP_OUTLIVES_RESTART_SEC,
    IMAGE,
    cancel_running_job,
    final_flow_run,
    finished_job,
    job_directory_after_its_end,
    letter_count_spec_uri,
    restart_worker_and_finish,
    running_controller,
    wait_for,
    wait_for_log,
)


@pytest.fixture(scope="module")
def docker_controller(prefect_stack, tmp_path_factory, sdk_bin, docker_client):
    workdir = tmp_path_factory.mktemp("docker")
    apps = [{"name": "letter_count", "specUri": letter_count_spec_uri(workdir, image=IMAGE)}, count_starts_app()]
    with running_controller(prefect_stack, workdir, sdk_bin, container_method="docker", apps=apps) as controller:
        yield controller


def test_an_app_without_image_runs_as_a_plain_process_under_docker(docker_controller):
    """As the original daemon does whatever CONTAINER_METHOD says (dendro 0.2.17 _start_job.py)."""
    job_id = create_count_starts_job(docker_controller.admin, docker_controller.resource_id)
    job = finished_job(docker_controller.admin, job_id)
    assert job["status"] == "completed", job.get("error")
    flow_run = final_flow_run(job_id)
    assert flow_run.state.is_completed() and flow_run.infrastructure_pid.startswith("process:")


def test_docker_job_completes_without_its_key_in_the_container_config(docker_controller, docker_client):
    controller = docker_controller
    job_id = create_letter_count_job(
        controller.admin, controller.resource_id, text="hello dendro world",
        inputParameters=[{"name": "letter", "value": "o"}, {"name": "delay_sec", "value": 3}],
    )
    container = wait_for(lambda: next(iter(docker_client.containers.list(filters={"label": f"{JOB_LABEL}={job_id}"})), None),
                         "the job's container")
    attrs = container.attrs
    assert attrs["HostConfig"]["NetworkMode"] == "host"  # the central listens on loopback
    assert attrs["HostConfig"]["NanoCpus"] == 10**9 and attrs["HostConfig"]["Memory"] == 1024**3  # numCpus, memoryGb
    assert attrs["Config"]["Image"] == IMAGE
    assert f"JOB_ID={job_id}" in attrs["Config"]["Env"]
    assert not any(e.startswith("JOB_PRIVATE_KEY") for e in attrs["Config"]["Env"])
    key = (controller.workdir / "dendro-jobs" / job_id / "secrets" / "job_private_key").read_text()
    assert key not in json.dumps(attrs)
    job = finished_job(controller.admin, job_id)
    assert job["status"] == "completed", job.get("error")
    assert json.loads(controller.admin.output(job_id, "output")) == {"letter": "o", "count": 3}
    flow_run = final_flow_run(job_id)
    assert flow_run.state.is_completed()
    log = wait_for_log(flow_run.id, "letter_count: 'o' appears 3 times in 18 characters", "launched as docker:")
    assert "(Job private key: [redacted])" in log
    wait_for(lambda: not containers_of(docker_client, job_id), "the job's container to be removed")
    job_directory_after_its_end(controller, job_id)


def containers_of(docker_client, job_id: str) -> list:
    return docker_client.containers.list(all=True, filters={"label": f"{JOB_LABEL}={job_id}"})


def test_cancelled_docker_job_leaves_no_container(docker_controller, docker_client):
    """The worker stops the container (`docker stop`), which would outlive its signalled `docker run` client."""
    controller = docker_controller
    job_id = create_letter_count_job(controller.admin, controller.resource_id,
                                     inputParameters=[{"name": "letter", "value": "o"}, {"name": "delay_sec", "value": 120}])
    cancel_running_job(controller, job_id, "prefect")
    wait_for(lambda: not containers_of(docker_client, job_id), "the job's container to be stopped and removed", 30)
    assert final_flow_run(job_id).state.is_cancelled()


def test_missing_image_fails_the_job_with_a_clear_reason(prefect_stack, tmp_path, sdk_bin, docker_client):
    apps = [{"name": "letter_count", "specUri": letter_count_spec_uri(tmp_path, image="no-such-image:latest")}]
    with running_controller(prefect_stack, tmp_path / "missing", sdk_bin, container_method="docker", apps=apps) as controller:
        job_id = create_letter_count_job(controller.admin, controller.resource_id)
        job = finished_job(controller.admin, job_id)
        reason = "docker image no-such-image:latest is not on this machine and could not be pulled: "
        assert job["status"] == "failed" and job["error"].startswith(reason) and "\n" not in job["error"]
        assert final_flow_run(job_id).state.message == job["error"]


def test_restarted_worker_takes_up_a_running_docker_job_and_it_completes_once(docker_controller, prefect_stack,
                                                                               docker_client):
    """The `docker run` client outlives the worker (a session of its own); a new worker follows it by its pid,
    without repeating a line of the log. (Last in the module: the module's worker does not come back.)"""
    controller = docker_controller
    job_id = create_letter_count_job(controller.admin, controller.resource_id,
                                     inputParameters=[{"name": "letter", "value": "o"}, {"name": "delay_sec", "value": APP_OUTLIVES_RESTART_SEC}])
    restart_worker_and_finish(controller, prefect_stack, job_id, "docker", output_in_job_dir=True)
    wait_for(lambda: not containers_of(docker_client, job_id), "the job's container to be removed")
