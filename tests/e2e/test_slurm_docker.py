"""The docker container method on the Slurm pool: the batch script runs the app's image with the docker
CLI on the compute node (this machine's one-node cluster and real docker engine)."""

import json
import time

import pytest

from dendro_prefect.workers.containers import JOB_LABEL
from tests.conftest import count_starts_app, create_count_starts_job, create_letter_count_job
from tests.e2e.test_slurm_pool import slurm, slurm_id_of, slurm_ready, slurm_state
from tests.stack import (
    IMAGE,
    cancel_running_job,
    completed_letter_count,
    final_flow_run,
    finished_job,
    letter_count_spec_uri,
    running_controller,
    wait_for,
)


@pytest.fixture(scope="module")
def slurm_docker_controller(prefect_stack, tmp_path_factory, sdk_bin, docker_client):
    slurm_ready()
    workdir = tmp_path_factory.mktemp("slurm-docker")
    apps = [{"name": "letter_count", "specUri": letter_count_spec_uri(workdir, image=IMAGE)}, count_starts_app()]
    with running_controller(prefect_stack, workdir, sdk_bin, apps=apps, worker_type="dendro-slurm",
                            run_method="slurm", job_variables={"container_method": "docker"}) as controller:
        yield controller


def test_an_app_without_image_runs_as_a_plain_process_in_the_batch_script(slurm_docker_controller):
    controller = slurm_docker_controller
    job_id = create_count_starts_job(controller.admin, controller.resource_id, runMethod="slurm")
    script = slurm("scontrol", "write", "batch_script", slurm_id_of(job_id), "-")
    assert "docker run" not in script and "count_starts/main.py" in script
    job = finished_job(controller.admin, job_id)
    assert job["status"] == "completed", job.get("error")
    assert final_flow_run(job_id).state.is_completed()


def containers_of(docker_client, job_id: str) -> list:
    return docker_client.containers.list(all=True, filters={"label": f"{JOB_LABEL}={job_id}"})


def test_docker_job_on_slurm_completes_with_the_key_only_in_a_mounted_file(slurm_docker_controller, docker_client):
    controller = slurm_docker_controller
    job_id = create_letter_count_job(controller.admin, controller.resource_id, runMethod="slurm",
                                     text="hello dendro world",
                                     inputParameters=[{"name": "letter", "value": "o"}, {"name": "delay_sec", "value": 3}])
    slurm_job_id = slurm_id_of(job_id)
    container = wait_for(lambda: next(iter(containers_of(docker_client, job_id)), None), "the job's container")
    key = (controller.workdir / "dendro-jobs" / job_id / "secrets" / "job_private_key").read_text()
    assert container.attrs["Config"]["Image"] == IMAGE
    assert f"JOB_ID={job_id}" in container.attrs["Config"]["Env"]
    assert key not in json.dumps(container.attrs)
    script = slurm("scontrol", "write", "batch_script", slurm_job_id, "-")
    assert "docker run --rm" in script and key not in script
    assert key not in slurm("scontrol", "show", "job", "-dd", slurm_job_id)
    log = completed_letter_count(controller, job_id)
    assert key not in log
    wait_for(lambda: not containers_of(docker_client, job_id), "the job's container to be removed")


def test_cancelled_docker_job_on_slurm_leaves_no_container(slurm_docker_controller, docker_client):
    """scancel signals the docker client; the batch script stops the container, which would outlive it."""
    controller = slurm_docker_controller
    job_id = create_letter_count_job(controller.admin, controller.resource_id, runMethod="slurm",
                                     inputParameters=[{"name": "letter", "value": "o"}, {"name": "delay_sec", "value": 120}])
    slurm_job_id = slurm_id_of(job_id)
    started = cancel_running_job(controller, job_id, "prefect")
    wait_for(lambda: slurm_state(slurm_job_id) == "CANCELLED", "scancel", timeout=10, interval=0.1)
    assert time.monotonic() - started < 5
    wait_for(lambda: not containers_of(docker_client, job_id), "the job's container to be stopped and removed", 30)
    assert final_flow_run(job_id).state.is_cancelled()
