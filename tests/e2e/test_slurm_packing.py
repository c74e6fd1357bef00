"""Jobs of one Dendro batch packed into one Slurm allocation (a pool with `pack_batches`), each job a
step of its own: they run, complete and are cancelled one by one, on this machine's real Slurm."""

import time

import pytest

from tests.conftest import create_letter_count_job
from tests.e2e.test_slurm_pool import slurm, slurm_ready
from tests.stack import (
    cancel_flow_run,
    final_flow_run,
    finished_job,
    flow_runs_of_job,
    infrastructure_id_of,
    running_controller,
    wait_for,
)


@pytest.fixture(scope="module")
def packing_controller(prefect_stack, tmp_path_factory, sdk_bin):
    slurm_ready()
    workdir = tmp_path_factory.mktemp("slurm-packing")
    with running_controller(prefect_stack, workdir, sdk_bin, worker_type="dendro-slurm", run_method="slurm",
                            job_variables={"pack_batches": True, "pack_window_sec": 20,
                                           "max_jobs_per_allocation": 2}) as controller:
        yield controller


def running_steps(allocation: str) -> list[str]:
    return slurm("squeue", "--noheader", "--steps", f"--jobs={allocation}", "--format=%j").split()


def test_jobs_of_a_batch_share_one_allocation_and_one_is_cancelled_alone(packing_controller):
    controller = packing_controller
    quick, slow = (create_letter_count_job(controller.admin, controller.resource_id, runMethod="slurm",
                                           batchId="sort-session-1",
                                           inputParameters=[{"name": "letter", "value": "o"},
                                                            {"name": "delay_sec", "value": delay}])
                   for delay in (8, 300))
    ids = {job_id: infrastructure_id_of(job_id, "slurm") for job_id in (quick, slow)}
    allocations = {infrastructure_id.split("/")[0] for infrastructure_id in ids.values()}
    assert len(allocations) == 1, ids
    allocation = allocations.pop()
    assert ids[slow] == f"{allocation}/{slow}"
    assert slurm("squeue", "--noheader", "--states=all", f"--jobs={allocation}", "--format=%j").strip() \
        == "dendro-batch-sort-session-1"
    wait_for(lambda: {f"dendro-{quick}", f"dendro-{slow}"} <= set(running_steps(allocation)), "both steps to run")

    cancel_flow_run(flow_runs_of_job(slow)[0].id)
    started = time.monotonic()
    wait_for(lambda: f"dendro-{slow}" not in running_steps(allocation), "the slow job's step to be cancelled",
             timeout=10)
    assert time.monotonic() - started < 5
    job = finished_job(controller.admin, quick)
    assert job["status"] == "completed", job.get("error")
    assert final_flow_run(quick).state.is_completed()
    assert finished_job(controller.admin, slow)["error"] == "Job canceled: flow run cancelled in Prefect"
    assert final_flow_run(slow).state.is_cancelled()
