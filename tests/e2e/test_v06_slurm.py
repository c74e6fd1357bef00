"""A Dendro 0.6 job through the `slurm` pool: the same batch script and watch as a 0.2 job's, its app a plain
process under the real dendro 0.6.22 SDK on the one-node test cluster (scripts/start-slurm.sh)."""

from __future__ import annotations

import json

import pytest

from dendro_prefect.embedded_controller import register_compute_client
from dendro_prefect.file_server import serving_files
from dendro_prefect.stand_in.process import running_stand_in
from tests.e2e.test_slurm_pool import slurm_ready, slurm_state
from tests.e2e.test_v06_jobs import SERVICE, app_spec, count_characters, finished, sdk06_bin  # noqa: F401 (fixture)
from tests.stack import final_flow_run, infrastructure_id_of, running_controller


@pytest.fixture(scope="module")
def slurm_client(prefect_stack, tmp_path_factory, sdk06_bin):  # noqa: F811 (the fixture imported above)
    slurm_ready()
    workdir = tmp_path_factory.mktemp("v06-slurm")
    (workdir / "inputs").mkdir()
    with running_stand_in(workdir / "central") as admin, serving_files(workdir / "inputs") as inputs_url:
        admin.create_service(SERVICE)
        admin.add_service_app(SERVICE, app_spec())
        config = register_compute_client(admin, workdir, SERVICE, "lab-slurm", run_method="slurm")
        with running_controller(prefect_stack, workdir, sdk06_bin, central=admin, registered=config,
                                worker_type="dendro-slurm", run_method="slurm",
                                job_variables={"time_margin_sec": 0, "partition": "debug"}) as running:
            yield running, workdir / "inputs", inputs_url


def test_a_job_runs_as_a_slurm_job_to_completed(slurm_client):
    running, inputs, inputs_url = slurm_client
    job_id = count_characters(running, inputs, inputs_url, "counted on a Slurm node")
    slurm_job_id = infrastructure_id_of(job_id, "slurm")
    job = finished(running.admin, job_id)
    assert job["status"] == "completed", job.get("error")
    [output] = job["outputFileResults"]
    assert json.loads(running.admin.download(output["url"])) == {"num_characters": 23}
    assert final_flow_run(job_id).state.is_completed()
    assert slurm_state(slurm_job_id) == "COMPLETED"
