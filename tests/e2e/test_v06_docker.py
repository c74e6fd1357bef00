"""A Dendro 0.6 job in docker through the `local` pool: the app's image (apps/hello_world under dendro 0.6.22, built
here by scripts/build-app-image.sh: no registry is reachable) run by the same `docker run` command as a 0.2 job's,
with the 0.6 environment and its `python <executable>` command line."""

from __future__ import annotations

import json
import os
import subprocess

import docker
import pytest

from dendro_prefect.embedded_controller import register_compute_client
from dendro_prefect.file_server import serving_files
from dendro_prefect.stand_in.process import running_stand_in
from dendro_prefect.workers.containers import container_name
from tests.conftest import REPO
from tests.e2e.test_v06_jobs import SERVICE, app_spec, count_characters, finished, sdk06_bin  # noqa: F401 (fixture)
from tests.stack import final_flow_run, running_controller, wait_for

IMAGE = "dendro-hello-world:local"


@pytest.fixture(scope="module")
def hello_world_image() -> str:
    try:
        docker.from_env().ping()
    except docker.errors.DockerException as error:
        pytest.skip(f"no docker engine on this machine ({error}); scripts/test.sh starts one")
    subprocess.run(["bash", str(REPO / "scripts" / "build-app-image.sh"), str(REPO / "apps" / "hello_world"), IMAGE],
                   check=True, capture_output=True, timeout=900,
                   env={**os.environ, "DENDRO_PREFECT_DENDRO_REQUIREMENT": "dendro==0.6.22"})
    return IMAGE


@pytest.fixture(scope="module")
def docker_client(prefect_stack, tmp_path_factory, sdk06_bin, hello_world_image):  # noqa: F811 (fixture above)
    workdir = tmp_path_factory.mktemp("v06-docker")
    (workdir / "inputs").mkdir()
    spec = app_spec()
    for processor in spec["processors"]:
        processor.update(image=hello_world_image, executable="/app/main.py")
    with running_stand_in(workdir / "central") as admin, serving_files(workdir / "inputs") as inputs_url:
        admin.create_service(SERVICE)
        admin.add_service_app(SERVICE, spec)
        config = register_compute_client(admin, workdir, SERVICE, "lab-docker", container_method="docker")
        with running_controller(prefect_stack, workdir, sdk06_bin, central=admin, registered=config) as running:
            yield running, workdir / "inputs", inputs_url


def test_a_job_runs_in_docker_to_completed(docker_client):
    running, inputs, inputs_url = docker_client
    job_id = count_characters(running, inputs, inputs_url, "counted in a container")
    job = finished(running.admin, job_id, timeout=120)
    assert job["status"] == "completed", job.get("error")
    [output] = job["outputFileResults"]
    assert json.loads(running.admin.download(output["url"])) == {"num_characters": 22}
    flow_run = final_flow_run(job_id)
    assert flow_run.state.is_completed() and flow_run.infrastructure_pid.startswith("docker:")
    engine = docker.from_env()
    wait_for(lambda: not engine.containers.list(all=True, filters={"name": container_name(job_id)}),
             "the job's container to be removed")
