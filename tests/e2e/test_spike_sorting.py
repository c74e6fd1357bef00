"""A real spike sort end to end: the project's mountainsort5 app (apps/mountainsort5: the real dendro
0.2.17 SDK, spikeinterface, mountainsort5) sorts a synthetic recording with known ground truth (fixed
seed), run by dendro-prefect on the local pool as a plain process (the app's own venv) and in docker (an
image built here), and on the Slurm pool (docker on Slurm: bench/spike_sorting.py, and letter_count in
tests/e2e/test_slurm_docker.py). Each output NWB is fetched from the central's blob store and compared
with the ground truth with spikeinterface's comparison tools (apps/mountainsort5/compare.py).

All the module's jobs are submitted at once (one controller per pool) so the sorts overlap."""

from contextlib import ExitStack

import pytest

from dendro_prefect.spike_sorting import (
    IMAGE,
    build_image,
    compare_with_ground_truth,
    job_request,
    make_recording,
    spec_uri,
)
from tests.e2e.test_slurm_pool import slurm_ready
from tests.stack import final_flow_run, finished_job, running_controller, wait_for_log

POOLS = {  # name: (the resource's container method, runMethod, worker type, job variables, in the image?, scheme)
    "process": ("none", "local", "dendro-local", {}, False, 2),
    "docker": ("docker", "local", "dendro-local", {}, True, 1),
    "slurm": ("none", "slurm", "dendro-slurm", {"partition": "debug"}, False, 3),
}
CORRUPT_NWB = b"\x89HDF\r\n\x1a\n" + b"not the rest of an NWB file" * 100
SORT_TIMEOUT_SEC = 300


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    return make_recording(tmp_path_factory.mktemp("recording"))


@pytest.fixture(scope="module")
def sorting(prefect_stack, tmp_path_factory, sdk_bin, docker_client, recording):
    """One controller per pool, and every job of the module submitted: {name: (controller, job id)}."""
    slurm_ready()
    build_image()
    with ExitStack() as stack:
        controllers = {}
        for name, (method, run_method, worker_type, job_variables, in_image, _) in POOLS.items():
            workdir = tmp_path_factory.mktemp(f"sorting-{name}")
            apps = [{"name": "mountainsort5", "specUri": spec_uri(workdir, IMAGE if in_image else None)}]
            controllers[name] = stack.enter_context(running_controller(
                prefect_stack, workdir, sdk_bin, container_method=method, apps=apps, worker_type=worker_type,
                run_method=run_method, job_variables=job_variables))
        jobs = {name: (controllers[name], submit(controllers[name], recording.nwb.read_bytes(), POOLS[name][1],
                                                 {"scheme": POOLS[name][5]}))
                for name in POOLS}
        jobs["corrupt"] = (controllers["process"], submit(controllers["process"], CORRUPT_NWB, "local"))
        # Empty: the central refuses a job that leaves out a parameter without default, the app one that is empty.
        jobs["no-series-path"] = (controllers["process"], submit(controllers["process"], recording.nwb.read_bytes(),
                                                                 "local", {"electrical_series_path": ""}))
        yield jobs


def submit(controller, nwb: bytes, run_method: str, parameters: dict | None = None) -> str:
    project_id = controller.admin.create_project("sorting")
    controller.admin.upload_file(project_id, "recording.nwb", nwb)
    return controller.admin.create_job(job_request(controller.resource_id, project_id, "recording.nwb", run_method,
                                                   parameters))


@pytest.mark.parametrize("pool", list(POOLS))
def test_mountainsort5_job_finds_the_true_units(sorting, recording, pool, tmp_path):
    controller, job_id = sorting[pool]
    job = finished_job(controller.admin, job_id, timeout=SORT_TIMEOUT_SEC)
    assert job["status"] == "completed", job.get("error")
    sorted_nwb = tmp_path / "sorting.nwb"
    sorted_nwb.write_bytes(controller.admin.output(job_id, "output"))
    summary = compare_with_ground_truth(sorted_nwb, recording)
    print(f"\n{pool} (scheme {POOLS[pool][5]}): {summary}")
    well_sorted = [unit for unit, accuracy in summary["accuracies"].items() if accuracy >= 0.8]
    assert len(well_sorted) >= 5 and 5 <= summary["units_found"] <= 9, summary
    assert final_flow_run(job_id).state.is_completed()


@pytest.mark.parametrize(("case", "reason"), [
    ("corrupt", "ValueError: input is not a valid NWB file: "),
    ("no-series-path", "ValueError: electrical_series_path is required"),
])
def test_bad_input_fails_the_job_with_the_reason(sorting, case, reason):
    """The dendro 0.2.17 SDK sets the job's error to its child's exit code; the reason is the last line of
    the job's console output (what Dendro shows of a failed job), which leads the flow run's state
    message and ends its log."""
    controller, job_id = sorting[case]
    job = finished_job(controller.admin, job_id, timeout=SORT_TIMEOUT_SEC)
    assert (job["status"], job["error"]) == ("failed", "Error running job: return code 1")
    console = controller.admin.output(job_id, "_console_output").decode()
    assert console.strip().splitlines()[-1].startswith(reason), console[-2000:]
    flow_run = final_flow_run(job_id)
    assert flow_run.state.is_failed() and flow_run.state.message.startswith(reason), flow_run.state.message
    wait_for_log(flow_run.id, reason)
