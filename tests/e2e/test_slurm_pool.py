"""Dendro jobs as real Slurm jobs: a one-node cluster of Debian's Slurm on this machine
(scripts/test.sh starts it with scripts/start-slurm.sh), a `dendro-slurm` worker, the real SDK. How a Slurm
end (TIMEOUT, OUT_OF_MEMORY, …) becomes the job's reason is the unit layer's (tests/unit/test_slurm_launcher.py):
Slurm's own time limit takes a minute or more to act."""

import json
import shutil
import subprocess
import time

import pytest

from tests.conftest import FIXTURES, create_letter_count_job
from tests.stack import (
    APP_OUTLIVES_RESTART_SEC,
    cancel_running_job,
    completed_letter_count,
    final_flow_run,
    finished_job,
    infrastructure_id_of,
    job_directory_after_its_end,
    letter_count_spec_uri,
    restart_worker_and_finish,
    running_controller,
    wait_for,
)

SLEEPER = FIXTURES / "apps" / "sleeper"


def slurm(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=True).stdout


def slurm_state(slurm_job_id: str) -> str:
    return slurm("squeue", "--noheader", "--states=all", f"--jobs={slurm_job_id}", "--format=%T").strip()


def slurm_ready() -> None:
    if shutil.which("sinfo") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        pytest.skip("no Slurm cluster answers here; scripts/test.sh starts one")


@pytest.fixture(scope="module")
def slurm_controller(prefect_stack, tmp_path_factory, sdk_bin):
    slurm_ready()
    workdir = tmp_path_factory.mktemp("slurm")
    apps = [{"name": "letter_count", "specUri": letter_count_spec_uri(workdir)},
            {"name": "sleeper", "specUri": (SLEEPER / "spec.json").as_uri()}]
    with running_controller(prefect_stack, workdir, sdk_bin, apps=apps, worker_type="dendro-slurm",
                            run_method="slurm", job_variables={"time_margin_sec": 0, "partition": "debug"},
                            worker_env={"PREFECT_WORKER_HEARTBEAT_SECONDS": "2"}) as controller:
        yield controller


def slurm_job(controller, **changes) -> str:
    return create_letter_count_job(controller.admin, controller.resource_id, runMethod="slurm", **changes)


def slurm_id_of(job_id: str) -> str:
    return infrastructure_id_of(job_id, "slurm")


def test_job_runs_as_a_slurm_job_and_its_key_is_nowhere_in_slurm(slurm_controller):
    controller = slurm_controller
    job_id = slurm_job(controller, text="hello dendro world",
                       inputParameters=[{"name": "letter", "value": "o"}, {"name": "delay_sec", "value": 2}])
    slurm_job_id = slurm_id_of(job_id)
    wait_for(lambda: controller.admin.job(job_id)["status"] == "running", "the job to run")
    key_file = controller.workdir / "dendro-jobs" / job_id / "secrets" / "job_private_key"
    key = key_file.read_text()
    assert key_file.stat().st_mode & 0o077 == 0
    shown = slurm("scontrol", "show", "job", "-dd", slurm_job_id)
    assert f"JobName=dendro-{job_id}" in shown and key not in shown
    script = slurm("scontrol", "write", "batch_script", slurm_job_id, "-")
    assert "#SBATCH --cpus-per-task=1" in script and "#SBATCH --mem=1024M" in script
    assert "#SBATCH --time=0-00:01:00" in script and key not in script
    log = completed_letter_count(controller, job_id)
    assert key not in log
    assert slurm_state(slurm_job_id) == "COMPLETED"
    job_directory_after_its_end(controller, job_id)


def sleeper_job(controller, time_sec: float) -> str:
    spec = json.loads((SLEEPER / "spec.json").read_text())["processors"][0]
    return slurm_job(controller, processorName="sleeper", processorSpec=spec, inputFiles=[], outputFiles=[],
                     inputParameters=[], requiredResources={"numCpus": 1, "numGpus": 0, "memoryGb": 0.5,
                                                            "timeSec": time_sec})


def test_cancel_in_prefect_scancels_the_job_within_5_seconds(slurm_controller):
    controller = slurm_controller
    job_id = slurm_job(controller, inputParameters=[{"name": "letter", "value": "o"}, {"name": "delay_sec", "value": 120}])
    slurm_job_id = slurm_id_of(job_id)
    started = cancel_running_job(controller, job_id, "prefect")
    wait_for(lambda: slurm_state(slurm_job_id) == "CANCELLED", "scancel", timeout=10, interval=0.1)
    assert time.monotonic() - started < 5
    assert finished_job(controller.admin, job_id)["error"] == "Job canceled: flow run cancelled in Prefect"
    assert final_flow_run(job_id).state.is_cancelled()


def test_job_deleted_at_the_central_is_scancelled_within_5_seconds(slurm_controller):
    """The sleeper app has no SDK to notice the deletion itself: only the worker can stop it."""
    controller = slurm_controller
    job_id = sleeper_job(controller, time_sec=600)
    slurm_job_id = slurm_id_of(job_id)
    wait_for(lambda: slurm_state(slurm_job_id) == "RUNNING", "the Slurm job to run")
    controller.admin.delete_job(job_id)
    started = time.monotonic()
    wait_for(lambda: slurm_state(slurm_job_id) == "CANCELLED", "scancel", timeout=10, interval=0.1)
    assert time.monotonic() - started < 5
    flow_run = final_flow_run(job_id)
    assert flow_run.state.is_cancelled() and "deleted at the central" in flow_run.state.message


def test_job_lost_with_its_node_is_submitted_again_and_completes(slurm_controller):
    """The node goes down under a running job (NODE_FAIL; the script says --no-requeue so that Slurm
    leaves the retry to the worker); the worker submits the job again, which runs once the node is
    back, and the Dendro job completes."""
    controller = slurm_controller
    node = slurm("sinfo", "--noheader", "--format=%N").split()[0]
    job_id = slurm_job(controller, inputParameters=[{"name": "letter", "value": "o"}, {"name": "delay_sec", "value": 10}])
    first = slurm_id_of(job_id)
    wait_for(lambda: controller.admin.job(job_id)["status"] == "running", "the job to run")
    try:
        slurm("scontrol", "update", f"nodename={node}", "state=down", "reason=dendro-prefect-test")
        wait_for(lambda: slurm_state(first) == "NODE_FAIL", "NODE_FAIL", timeout=30)
        job_dir = controller.workdir / "dendro-jobs" / job_id
        wait_for(lambda: len((job_dir / "slurm_job_ids").read_text().split()) == 2, "the second submission")
    finally:  # the cluster returns the node to service by itself (ReturnToService=2); make sure
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
    job = finished_job(controller.admin, job_id, timeout=120)
    assert job["status"] == "completed", job.get("error")
    assert final_flow_run(job_id).state.is_completed()


def test_restarted_worker_takes_up_a_running_job_and_it_completes_once(slurm_controller, prefect_stack):
    """No second sbatch, and no line of the job's output twice in the flow-run log. (Last in the
    module: the module's worker does not come back.)"""
    controller = slurm_controller
    job_id = slurm_job(controller, inputParameters=[{"name": "letter", "value": "o"}, {"name": "delay_sec", "value": APP_OUTLIVES_RESTART_SEC}])
    slurm_id_of(job_id)
    restart_worker_and_finish(controller, prefect_stack, job_id, "slurm", output_in_job_dir=True)
    sbatched = slurm("squeue", "--noheader", "--states=all", f"--name=dendro-{job_id}", "--format=%i").split()
    assert len(sbatched) == 1
