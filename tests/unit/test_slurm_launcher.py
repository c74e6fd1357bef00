"""The Slurm launcher against a fake of Slurm's CLI (`FakeSlurmCli` in place of `_slurm`): submission, the
translation of every squeue state into ours, requeues of jobs Slurm lost, jobs gone from squeue resolved from
the exit code their script wrote, packed jobs, and kills."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dendro_prefect.workers.launch import AppCommand, InfrastructureState, LaunchError
from dendro_prefect.workers.slurm import SlurmJobConfiguration, SlurmWorker
from dendro_prefect.workers.slurm import launcher as slurm_launcher
from dendro_prefect.workers.slurm.job_dir import SlurmJobDirectory
from dendro_prefect.workers.slurm.launcher import (
    ENDED_STATES,
    LOST_STATES,
    UNFINISHED_SLURM_STATES,
    SlurmLauncher,
)
from dendro_prefect.workers.slurm.settings import SlurmJobSettings
from tests.unit.fakes import FakeSlurmCli, launch_request

pytestmark = pytest.mark.anyio


def app_command(request, job_dir) -> AppCommand:
    return AppCommand([request.app_executable], dict(request.env), key_in_env=True)


@pytest.fixture
def slurm(monkeypatch) -> FakeSlurmCli:
    cli = FakeSlurmCli()
    monkeypatch.setattr(slurm_launcher, "_slurm", cli)
    return cli


def launcher(**settings) -> SlurmLauncher:
    return SlurmLauncher(app_command, SlurmJobSettings(**settings))


async def submitted(tmp_path: Path, slurm: FakeSlurmCli, **settings) -> tuple[SlurmLauncher, str, SlurmJobDirectory]:
    slurm_job = launcher(**settings)
    request = launch_request(tmp_path)
    infrastructure_id = await slurm_job.submit(request)
    return slurm_job, infrastructure_id, SlurmJobDirectory(request.job_dir)


async def state_of(slurm_job: SlurmLauncher, infrastructure_id: str) -> InfrastructureState:
    return (await slurm_job.states([infrastructure_id]))[infrastructure_id]


async def test_a_job_is_submitted_as_its_batch_script_and_its_slurm_id_recorded(tmp_path, slurm):
    _, infrastructure_id, job_dir = await submitted(tmp_path, slurm)
    assert infrastructure_id == "slurm:100"
    (slurm_job_id, script, options), = slurm.submitted
    assert script == job_dir.batch_script and options == ("--parsable",)
    assert "#SBATCH --job-name=dendro-p1.abcdefgh" in script.read_text()
    assert job_dir.slurm_job_ids.read_text().split() == ["100"]


async def test_a_resubmitted_job_starts_without_the_exit_code_and_marks_of_its_earlier_run(tmp_path, slurm):
    job_dir = SlurmJobDirectory.create(tmp_path / "job")
    for stale in (job_dir.exit_code, job_dir.slurm_job_ids, job_dir.cancelled):
        stale.write_text("7\n")
    slurm_job, infrastructure_id, _ = await submitted(tmp_path, slurm)
    assert not job_dir.exit_code.exists() and not job_dir.cancelled.exists()
    assert job_dir.slurm_job_ids.read_text().split() == ["100"]
    assert await state_of(slurm_job, infrastructure_id) == InfrastructureState("running")


async def test_a_refused_sbatch_fails_the_launch_with_its_one_line_reason_and_removes_the_key(tmp_path, slurm):
    slurm.refusal = "sbatch: error: Batch job submission failed:\n  Invalid account or account/partition combination"
    with pytest.raises(LaunchError, match="^sbatch refused the job: sbatch: error: Batch job submission failed: "
                                          "Invalid account or account/partition combination$"):
        await submitted(tmp_path, slurm)
    assert not (tmp_path / "job" / "secrets").exists()


@pytest.mark.parametrize("slurm_state", sorted(UNFINISHED_SLURM_STATES))
async def test_a_job_that_holds_or_awaits_its_allocation_is_running(tmp_path, slurm, slurm_state):
    slurm_job, infrastructure_id, _ = await submitted(tmp_path, slurm)
    slurm.set("100", slurm_state)
    assert await state_of(slurm_job, infrastructure_id) == InfrastructureState("running")


@pytest.mark.parametrize("exit_code", [None, 0])
async def test_a_completed_job_exited_with_its_recorded_code_or_zero(tmp_path, slurm, exit_code):
    slurm_job, infrastructure_id, job_dir = await submitted(tmp_path, slurm)
    slurm.set("100", "COMPLETED", "None")
    if exit_code is not None:
        job_dir.exit_code.write_text(f"{exit_code}\n")
    assert await state_of(slurm_job, infrastructure_id) == InfrastructureState("exited", 0)


@pytest.mark.parametrize("slurm_state, reason, exit_code, expected_reason", [
    ("FAILED", "NonZeroExitCode", 3, "Slurm state FAILED, reason NonZeroExitCode"),
    ("TIMEOUT", "TimeLimit", None, "Slurm state TIMEOUT, reason TimeLimit"),
    ("OUT_OF_MEMORY", "OutOfMemory", None, "Slurm state OUT_OF_MEMORY, reason OutOfMemory"),
    ("CANCELLED", "None", None, "Slurm state CANCELLED"),
    ("DEADLINE", "DeadLine", None, "Slurm state DEADLINE, reason DeadLine"),
    ("REVOKED", "", None, "Slurm state REVOKED"),
])
async def test_an_end_slurm_gave_the_job_is_named_with_its_reason(tmp_path, slurm, slurm_state, reason, exit_code,
                                                                   expected_reason):
    slurm_job, infrastructure_id, job_dir = await submitted(tmp_path, slurm)
    slurm.set("100", slurm_state, reason)
    if exit_code is not None:
        job_dir.exit_code.write_text(str(exit_code))
    assert await state_of(slurm_job, infrastructure_id) == InfrastructureState("exited", exit_code, expected_reason)


def test_every_slurm_state_is_either_active_or_ended_and_retried_ones_are_ends():
    assert not UNFINISHED_SLURM_STATES & ENDED_STATES
    assert LOST_STATES <= ENDED_STATES


@pytest.mark.parametrize("written, expected", [
    ("0\n", InfrastructureState("exited", 0)),
    ("137\n", InfrastructureState("exited", 137)),
    (None, InfrastructureState("gone", reason="Slurm no longer knows the job and it left no exit code")),
    ("garbage", InfrastructureState("gone", reason="Slurm no longer knows the job and it left no exit code")),
])
async def test_a_job_gone_from_squeue_is_resolved_from_the_exit_code_file(tmp_path, slurm, written, expected):
    slurm_job, infrastructure_id, job_dir = await submitted(tmp_path, slurm)
    slurm.forget("100")
    if written is not None:
        job_dir.exit_code.write_text(written)
    assert await state_of(slurm_job, infrastructure_id) == expected


@pytest.mark.parametrize("slurm_state", sorted(LOST_STATES))
async def test_a_job_slurm_lost_is_read_as_lost_and_changes_nothing(tmp_path, slurm, slurm_state):
    slurm_job, infrastructure_id, job_dir = await submitted(tmp_path, slurm)
    slurm.set("100", slurm_state)
    assert await state_of(slurm_job, infrastructure_id) == InfrastructureState("lost", None, f"Slurm state {slurm_state}")
    assert len(slurm.submitted) == 1  # a read: running it again is the job's decision (JobRun)


async def test_a_lost_job_run_again_is_submitted_again_and_forces_its_status_updates(tmp_path, slurm):
    slurm_job, infrastructure_id, job_dir = await submitted(tmp_path, slurm)
    slurm.set("100", "NODE_FAIL")
    job_dir.exit_code.write_text("1")  # an exit code of the lost attempt must not end the next one
    await slurm_job.run_again(infrastructure_id)
    (_, script, options) = slurm.submitted[-1]
    assert script == job_dir.batch_script and options == ("--parsable", "--export=ALL,DENDRO_FORCE_STATUS_UPDATES=1")
    assert job_dir.slurm_job_ids.read_text().split() == ["100", "101"]
    assert not job_dir.exit_code.exists()
    slurm.calls.clear()
    assert await state_of(slurm_job, infrastructure_id) == InfrastructureState("running")  # the new one, PENDING
    assert "--jobs=101" in slurm.calls[0]
    slurm.set("101", "PREEMPTED")
    assert await state_of(slurm_job, infrastructure_id) == InfrastructureState("lost", None, "Slurm state PREEMPTED",
                                                                               attempt=2)


async def test_a_refused_resubmission_is_a_launch_error_naming_slurms_reason(tmp_path, slurm):
    slurm_job, infrastructure_id, _ = await submitted(tmp_path, slurm)
    slurm.set("100", "PREEMPTED")
    slurm.refusal = "sbatch: error: QOSMaxSubmitJobPerUserLimit"
    with pytest.raises(LaunchError, match="^sbatch refused the job: sbatch: error: QOSMaxSubmitJobPerUserLimit$"):
        await slurm_job.run_again(infrastructure_id)


async def test_one_squeue_call_reports_every_watched_job(tmp_path, slurm):
    slurm_job = launcher()
    ids = [await slurm_job.submit(launch_request(tmp_path, job_id=f"p1.j{i}", job_dir=tmp_path / f"j{i}"))
           for i in range(5)]
    slurm.set("102", "RUNNING")
    slurm.set("104", "COMPLETED")
    slurm.calls.clear()
    states = await slurm_job.states(ids)
    (squeue,) = slurm.calls
    assert squeue[0] == "squeue" and "--states=all" in squeue
    assert sorted(next(a for a in squeue if a.startswith("--jobs=")).removeprefix("--jobs=").split(",")) == [
        "100", "101", "102", "103", "104"]
    assert [states[i].phase for i in ids] == ["running", "running", "running", "running", "exited"]


async def test_a_restarted_worker_watches_the_latest_attempt_recorded_in_the_job_directory(tmp_path, slurm):
    request = launch_request(tmp_path)
    job_dir = SlurmJobDirectory.create(request.job_dir)
    job_dir.slurm_job_ids.write_text("100\n101\n")
    slurm.set("100", "PREEMPTED")
    slurm.set("101", "RUNNING")
    slurm_job = launcher()
    await slurm_job.attach("slurm:100", request)
    assert await state_of(slurm_job, "slurm:100") == InfrastructureState("running")
    await slurm_job.kill("slurm:100")
    assert slurm.cancelled == ["101"]


async def test_an_attached_job_without_its_directory_is_watched_by_its_infrastructure_id(tmp_path, slurm):
    slurm_job = launcher()
    await slurm_job.attach("slurm:555", launch_request(tmp_path, job_dir=tmp_path / "elsewhere"))
    slurm.set("555", "TIMEOUT", "TimeLimit")
    assert await state_of(slurm_job, "slurm:555") == InfrastructureState("exited", None,
                                                                         "Slurm state TIMEOUT, reason TimeLimit")


async def test_kill_scancels_the_job_and_release_removes_its_key(tmp_path, slurm):
    slurm_job, infrastructure_id, job_dir = await submitted(tmp_path, slurm)
    assert (job_dir.secrets / "job_private_key").exists()
    await slurm_job.kill(infrastructure_id)
    assert slurm.cancelled == ["100"]
    await slurm_job.release(infrastructure_id)
    assert not job_dir.secrets.exists()


# --- packed jobs -----------------------------------------------------------------------------------------------


async def submit_batch(tmp_path: Path, slurm_job: SlurmLauncher, count: int, **changes) -> list[str]:
    requests = [launch_request(tmp_path, job_id=f"p1.j{i}", job_dir=tmp_path / f"j{i}", batch_id="b7", **changes)
                for i in range(count)]
    return list(await asyncio.gather(*(slurm_job.submit(request) for request in requests)))


async def test_jobs_of_one_batch_share_one_sbatch_each_as_a_step_of_its_allocation(tmp_path, slurm):
    slurm_job = launcher(pack_batches=True, pack_window_sec=0.01)
    ids = await submit_batch(tmp_path, slurm_job, 3)
    assert ids == ["slurm:100/p1.j0", "slurm:100/p1.j1", "slurm:100/p1.j2"]
    (_, script, _), = slurm.submitted
    assert script.parent == tmp_path / "slurm-packs" and "#SBATCH --ntasks=3" in script.read_text()
    assert all((tmp_path / f"j{i}" / "slurm_job_ids").read_text().split() == ["100"] for i in range(3))
    assert all((tmp_path / f"j{i}" / "batch.sh").exists() for i in range(3))  # what each step runs


async def test_a_packed_job_ended_once_its_step_wrote_its_exit_code_though_the_allocation_runs(tmp_path, slurm):
    slurm_job = launcher(pack_batches=True, pack_window_sec=0.01)
    first, second = await submit_batch(tmp_path, slurm_job, 2)
    slurm.set("100", "RUNNING")
    (tmp_path / "j0" / "exit_code").write_text("0")
    states = await slurm_job.states([first, second])
    assert states == {first: InfrastructureState("exited", 0), second: InfrastructureState("running")}


async def test_a_packed_job_whose_allocation_completed_without_its_exit_code_never_ran(tmp_path, slurm):
    slurm_job = launcher(pack_batches=True, pack_window_sec=0.01)
    first, _ = await submit_batch(tmp_path, slurm_job, 2)
    slurm.set("100", "COMPLETED")
    assert await state_of(slurm_job, first) == InfrastructureState("exited", None, "Slurm state COMPLETED")


async def test_killing_a_packed_job_marks_it_cancelled_and_scancels_its_step_only(tmp_path, slurm):
    slurm_job = launcher(pack_batches=True, pack_window_sec=0.01)
    first, second = await submit_batch(tmp_path, slurm_job, 2)
    slurm.steps["100"] = [("100.0", "dendro-p1.j0"), ("100.1", "dendro-p1.j1")]
    await slurm_job.kill(second)
    assert (tmp_path / "j1" / "cancelled").exists() and not (tmp_path / "j0" / "cancelled").exists()
    assert slurm.cancelled == ["100.1"]


async def test_killing_a_packed_job_whose_step_has_not_started_cancels_nothing_in_slurm(tmp_path, slurm):
    slurm_job = launcher(pack_batches=True, pack_window_sec=0.01)
    first, _ = await submit_batch(tmp_path, slurm_job, 2)
    await slurm_job.kill(first)
    assert (tmp_path / "j0" / "cancelled").exists() and slurm.cancelled == []


async def test_a_requeued_packed_job_runs_alone_and_is_watched_and_killed_as_its_own_job(tmp_path, slurm):
    slurm_job = launcher(pack_batches=True, pack_window_sec=0.01)
    first, _ = await submit_batch(tmp_path, slurm_job, 2)
    slurm.set("100", "NODE_FAIL")
    assert (await state_of(slurm_job, first)).phase == "lost"
    await slurm_job.run_again(first)
    assert slurm.submitted[-1][1] == tmp_path / "j0" / "batch.sh"
    slurm.set("101", "RUNNING")
    (tmp_path / "j0" / "exit_code").write_text("0")  # a lone job's end is Slurm's word, not its exit code alone
    assert await state_of(slurm_job, first) == InfrastructureState("running")
    await slurm_job.kill(first)
    assert slurm.cancelled == ["101"]


@pytest.mark.parametrize("pack_batches, batch_id, num_gpus", [
    (False, "b7", 0),  # the pool does not pack
    (True, None, 0),  # a job of no batch
    (True, "b7", 1),  # GPU jobs always run alone
])
async def test_jobs_that_are_not_packed_get_an_sbatch_of_their_own(tmp_path, slurm, pack_batches, batch_id,
                                                                    num_gpus):
    slurm_job = launcher(pack_batches=pack_batches, pack_window_sec=0.01)
    ids = [await slurm_job.submit(launch_request(tmp_path, job_id=f"p1.j{i}", job_dir=tmp_path / f"j{i}",
                                                 batch_id=batch_id, num_gpus=num_gpus)) for i in range(2)]
    assert ids == ["slurm:100", "slurm:101"]
    assert [script for _, script, _ in slurm.submitted] == [tmp_path / "j0" / "batch.sh", tmp_path / "j1" / "batch.sh"]


# --- the worker's part -------------------------------------------------------------------------------------------


def test_the_worker_reuses_one_launcher_per_container_method_and_settings():
    worker = SlurmWorker(work_pool_name="slurm-unit")
    configuration = SlurmJobConfiguration(container_method="apptainer", app_image="app:1", partition="cpu")
    assert worker.launcher(configuration) is worker.launcher(configuration.model_copy())
    other = worker.launcher(configuration.model_copy(update={"partition": "big"}))
    assert other is not worker.launcher(configuration) and other.settings.partition == "big"
    assert worker.launcher(configuration.model_copy(update={"max_infrastructure_retries": 5})).settings \
        .max_infrastructure_retries == 5


def test_the_worker_refuses_an_unknown_container_method_on_the_nodes():
    worker = SlurmWorker(work_pool_name="slurm-unit")
    with pytest.raises(LaunchError, match="unknown container method .podman.; use one of docker, apptainer, singularity, none"):
        worker.launcher(SlurmJobConfiguration(container_method="podman", app_image="app:1"))


@pytest.mark.parametrize("time_limit_sec, margin, expected", [(None, 60.0, None), (600.0, 60.0, 660.0),
                                                              (600.0, 0.0, 600.0)])
def test_the_worker_gives_slurm_the_margin_before_it_kills_a_job_itself(time_limit_sec, margin, expected):
    configuration = SlurmJobConfiguration(time_limit_sec=time_limit_sec, time_margin_sec=margin)
    assert SlurmWorker(work_pool_name="slurm-unit").job_time_limit(configuration) == expected


async def test_a_slurm_command_that_cannot_run_is_a_launch_error_naming_it(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(LaunchError, match="^sbatch failed: .*No such file or directory"):
        await slurm_launcher._slurm("sbatch", "--parsable", "batch.sh")
