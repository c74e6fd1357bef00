"""A Dendro 0.6 job through the `slurm` pool: the same batch script and watch as a 0.2 job's, its app a plain
process under the real dendro 0.6.22 SDK on the one-node test cluster (scripts/start-slurm.sh)."""

from __future__ import annotations

import pytest

from tests.e2e.test_slurm_pool import slurm_ready, slurm_state
from tests.stack import final_flow_run, infrastructure_id_of
from tests.v06_service import running_compute_client


@pytest.fixture(scope="module")
def slurm_compute_client(prefect_stack, tmp_path_factory, sdk06_bin):
    slurm_ready()
    with running_compute_client(prefect_stack, tmp_path_factory.mktemp("v06-slurm"), sdk06_bin, "lab-slurm",
                                run_method="slurm", worker_type="dendro-slurm",
                                job_variables={"time_margin_sec": 0, "partition": "debug"}) as stack:
        yield stack


def test_a_job_runs_as_a_slurm_job_to_completed(slurm_compute_client):
    job_id = slurm_compute_client.count_characters("counted on a Slurm node")
    slurm_job_id = infrastructure_id_of(job_id, "slurm")
    job = slurm_compute_client.finished(job_id)
    assert job["status"] == "completed", job.get("error")
    assert slurm_compute_client.output(job) == {"num_characters": 23}
    assert final_flow_run(job_id).state.is_completed()
    assert slurm_state(slurm_job_id) == "COMPLETED"
