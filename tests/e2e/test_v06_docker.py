"""A Dendro 0.6 job in docker through the `local` pool: the app's image (apps/hello_world under dendro 0.6.22, built
here by scripts/build-app-image.sh: no registry is reachable) run by the same `docker run` command as a 0.2 job's,
with the 0.6 environment and its `python <executable>` command line."""

from __future__ import annotations

import docker
import pytest

from dendro_prefect.workers.containers import container_name
from tests.stack import final_flow_run, wait_for
from tests.v06_service import app_spec, running_compute_client


@pytest.fixture(scope="module")
def docker_compute_client(prefect_stack, tmp_path_factory, sdk06_bin, hello_world_image):
    spec = app_spec(image=hello_world_image, executable="/app/main.py")
    with running_compute_client(prefect_stack, tmp_path_factory.mktemp("v06-docker"), sdk06_bin, "lab-docker", spec,
                                container_method="docker") as stack:
        yield stack


def test_a_job_runs_in_docker_to_completed(docker_compute_client):
    job_id = docker_compute_client.count_characters("counted in a container")
    job = docker_compute_client.finished(job_id, timeout=120)
    assert job["status"] == "completed", job.get("error")
    assert docker_compute_client.output(job) == {"num_characters": 22}
    flow_run = final_flow_run(job_id)
    assert flow_run.state.is_completed() and flow_run.infrastructure_pid.startswith("docker:")
    engine = docker.from_env()
    wait_for(lambda: not engine.containers.list(all=True, filters={"name": container_name(job_id)}),
             "the job's container to be removed")
