"""The Slurm batch and pack scripts, rendered from the job's resources and the pool's cluster settings, and run
with bash itself (no Slurm: `#SBATCH` lines are comments to bash) where what they do matters."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from dendro_prefect.workers.apptainer import apptainer_command_builder
from dendro_prefect.workers.docker_cli import docker_command
from dendro_prefect.workers.launch import AppCommand
from dendro_prefect.workers.slurm.job_dir import SlurmJobDirectory
from dendro_prefect.workers.slurm.script import (
    memory_mb,
    render_batch_script,
    render_pack_script,
    slurm_time,
)
from dendro_prefect.workers.slurm.settings import SlurmJobSettings
from tests.unit.fakes import JOB_KEY, launch_request


def sbatch_options(script: str) -> list[str]:
    """The options sbatch reads: `#SBATCH` lines before the first command (it stops reading there)."""
    options = []
    for line in script.splitlines()[1:]:
        if line.startswith("#SBATCH "):
            options.append(line.removeprefix("#SBATCH "))
        elif line.strip() and not line.startswith("#"):
            break
    return options


def render(tmp_path: Path, settings: SlurmJobSettings = SlurmJobSettings(), setup_lines: list[str] = (),
           command: AppCommand | None = None, **request_changes) -> str:
    request = launch_request(tmp_path, **request_changes)
    job_dir = SlurmJobDirectory.create(request.job_dir)
    command = command or AppCommand(["/app/main.py"], dict(request.env), key_in_env=True)
    return render_batch_script(request, job_dir, command, settings.model_copy(update={"setup_lines": list(setup_lines)}))


def test_the_script_names_the_job_its_output_and_working_directory_and_leaves_requeues_to_the_worker(tmp_path):
    options = sbatch_options(render(tmp_path))
    job_dir = tmp_path / "job"
    assert options[:5] == ["--job-name=dendro-p1.abcdefgh", f"--output={job_dir}/stdout.log",
                           f"--chdir={job_dir}/tmp/working", "--ntasks=1", "--no-requeue"]


@pytest.mark.parametrize("num_cpus, memory_gb, cpus, memory", [
    (2, 4.0, "2", "4096M"),
    (16, 0.5, "16", "512M"),
    (0, 1.5, "1", "1536M"),  # no CPU asked: one
    (1, 0.0, "1", "1M"),  # no memory asked: Slurm's smallest, never 0 (which means all of a node's)
])
def test_cpus_and_memory_come_from_the_jobs_resources(tmp_path, num_cpus, memory_gb, cpus, memory):
    options = sbatch_options(render(tmp_path, num_cpus=num_cpus, memory_gb=memory_gb))
    assert f"--cpus-per-task={cpus}" in options and f"--mem={memory}" in options


@pytest.mark.parametrize("time_limit_sec, margin, expected", [
    (3600.0, 60.0, "--time=0-01:01:00"),
    (3600.0, 0.0, "--time=0-01:00:00"),
    (86400.0, 600.0, "--time=1-00:10:00"),
    (30.5, 60.0, "--time=0-00:01:31"),
])
def test_time_is_the_jobs_time_limit_plus_the_pools_margin(tmp_path, time_limit_sec, margin, expected):
    options = sbatch_options(render(tmp_path, SlurmJobSettings(time_margin_sec=margin), time_limit_sec=time_limit_sec))
    assert [o for o in options if o.startswith("--time")] == [expected]


def test_a_job_without_time_limit_gets_the_partitions_default(tmp_path):
    assert not [o for o in sbatch_options(render(tmp_path, time_limit_sec=None)) if o.startswith("--time")]


@pytest.mark.parametrize("num_gpus, partition, gpu_partition, expected", [
    (0, "cpu", "gpu", ["--partition=cpu"]),
    (1, "cpu", "gpu", ["--partition=gpu", "--gpus=1"]),
    (4, "cpu", "gpu", ["--partition=gpu", "--gpus=4"]),
    (2, "cpu", "", ["--partition=cpu", "--gpus=2"]),  # no GPU partition: the partition
    (0, "", "gpu", []),  # the cluster's default partition
    (1, "", "", ["--gpus=1"]),
])
def test_gpu_jobs_go_to_the_gpu_partition_with_their_gpus(tmp_path, num_gpus, partition, gpu_partition, expected):
    options = sbatch_options(render(tmp_path, SlurmJobSettings(partition=partition, gpu_partition=gpu_partition),
                                    num_gpus=num_gpus))
    assert [o for o in options if o.startswith(("--partition", "--gpus"))] == expected


def test_account_qos_and_extra_lines_are_sbatch_options_read_before_the_first_command(tmp_path):
    script = render(tmp_path, SlurmJobSettings(account="lab", qos="high",
                                             extra_sbatch_lines=["--constraint=ib", "--exclusive"]),
                    setup_lines=["module load apptainer"])
    assert sbatch_options(script)[-4:] == ["--account=lab", "--qos=high", "--constraint=ib", "--exclusive"]
    assert script.count("#SBATCH") == len(sbatch_options(script))  # none after a command: sbatch would ignore it


def test_no_account_or_qos_lines_unless_the_pool_sets_them(tmp_path):
    assert not [o for o in sbatch_options(render(tmp_path)) if o.startswith(("--account", "--qos"))]


def test_setup_lines_run_in_order_before_the_app(tmp_path):
    script = render(tmp_path, setup_lines=["module load apptainer", "source /opt/site.sh"])
    lines = script.splitlines()
    assert lines.index("module load apptainer") < lines.index("source /opt/site.sh") < lines.index("/app/main.py")


def exported(script: str, name: str) -> str:
    """The value bash gives `name` after the script's export lines."""
    exports = "\n".join(line for line in script.splitlines() if line.startswith("export ") and "JOB_PRIVATE_KEY"
                        not in line)
    return subprocess.run(["bash", "-c", f'{exports}\nprintf %s "${name}"'], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.parametrize("value", ["plain", "two words", "it's", 'say "hi"', "$HOME and `id`", "a\\b", "tab\there",
                                   "semi;colon && rm -rf /", ""])
def test_environment_values_reach_the_app_verbatim_whatever_their_characters(tmp_path, value):
    assert exported(render(tmp_path, env={"VALUE": value}), "VALUE") == value


def test_the_key_is_read_from_a_private_file_and_never_written_into_the_script(tmp_path):
    script = render(tmp_path)
    key_file = tmp_path / "job" / "secrets" / "job_private_key"
    assert JOB_KEY not in script
    assert f'export JOB_PRIVATE_KEY="$(cat {key_file})"' in script
    assert key_file.read_text() == JOB_KEY
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700


def test_a_command_that_carries_the_key_itself_gets_no_key_file_from_the_script(tmp_path):
    request = launch_request(tmp_path)
    job_dir = SlurmJobDirectory.create(request.job_dir)
    command = apptainer_command_builder("apptainer")(request, job_dir)  # the key is in its --env-file
    script = render_batch_script(request, job_dir, command, SlurmJobSettings())
    assert "JOB_PRIVATE_KEY" not in script and JOB_KEY not in script
    assert not (job_dir.secrets / "job_private_key").exists()


def test_a_docker_job_is_stopped_by_a_trap_since_its_container_outlives_the_signalled_client(tmp_path):
    request = launch_request(tmp_path)
    job_dir = SlurmJobDirectory.create(request.job_dir)
    script = render_batch_script(request, job_dir, docker_command(request, job_dir), SlurmJobSettings())
    assert "trap 'docker stop --time 5 dendro-p1-abcdefgh' TERM INT" in script
    assert script.count('wait "$app"') == 2  # the trap interrupts the first wait; the second collects the status
    assert JOB_KEY not in script


def test_a_plain_command_has_no_trap(tmp_path):
    assert "trap" not in render(tmp_path)


@pytest.mark.parametrize("exit_code", [0, 3])
def test_the_script_records_the_apps_exit_code_and_exits_with_it(tmp_path, exit_code):
    script = tmp_path / "batch.sh"
    script.write_text(render(tmp_path, command=AppCommand(["sh", "-c", f"exit {exit_code}"], {}, key_in_env=False)))
    assert subprocess.run(["bash", str(script)], cwd=tmp_path).returncode == exit_code
    assert (tmp_path / "job" / "exit_code").read_text().strip() == str(exit_code)


def test_the_app_reads_its_key_from_the_file_at_start(tmp_path):
    script = tmp_path / "batch.sh"
    command = AppCommand(["sh", "-c", 'test "$JOB_PRIVATE_KEY" = "$EXPECTED"'], {"EXPECTED": JOB_KEY},
                         key_in_env=True)
    script.write_text(render(tmp_path, command=command))
    assert subprocess.run(["bash", str(script)], cwd=tmp_path).returncode == 0


def test_scancel_runs_the_stop_command_and_the_apps_end_is_recorded(tmp_path):
    """scancel signals the batch shell (TERM): the trap stops the app (here: kills it, as `docker stop`
    stops the container), and the script records the status its client ended with."""
    pid_file = tmp_path / "app.pid"
    command = AppCommand(["sh", "-c", f'echo $$ > {pid_file}; exec sleep 30'], {}, key_in_env=False,
                         stop_argv=["sh", "-c", f'kill "$(cat {pid_file})"'])
    script = tmp_path / "batch.sh"
    script.write_text(render(tmp_path, command=command))
    shell = subprocess.Popen(["bash", str(script)], cwd=tmp_path)
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline, "the app never started"
        time.sleep(0.01)
    shell.send_signal(signal.SIGTERM)
    assert shell.wait(timeout=10) == 128 + signal.SIGTERM
    assert (tmp_path / "job" / "exit_code").read_text().strip() == str(128 + signal.SIGTERM)


@pytest.mark.parametrize("seconds, expected", [
    (0.2, "0-00:00:01"),  # rounded up: a limit is never shortened
    (59, "0-00:00:59"),
    (60, "0-00:01:00"),
    (3661, "0-01:01:01"),
    (86399.5, "1-00:00:00"),
    (90061, "1-01:01:01"),
    (10 * 86400, "10-00:00:00"),
])
def test_slurm_time_is_days_hours_minutes_seconds(seconds, expected):
    assert slurm_time(seconds) == expected


@pytest.mark.parametrize("memory_gb, expected", [(1.0, 1024), (0.25, 256), (2.9999, 3071), (0.0, 1)])
def test_memory_is_in_whole_megabytes_at_least_one(tmp_path, memory_gb, expected):
    assert memory_mb(launch_request(tmp_path, memory_gb=memory_gb)) == expected


# --- packs ---------------------------------------------------------------------------------------------------------


def pack(tmp_path: Path, count: int, options: SlurmJobSettings = SlurmJobSettings(), **changes) -> tuple[str, list]:
    jobs = []
    for index in range(count):
        request = launch_request(tmp_path, job_id=f"p1.job{index}", job_dir=tmp_path / f"job{index}",
                                 batch_id="batch-7", **changes)
        jobs.append((request, SlurmJobDirectory.create(request.job_dir)))
    return render_pack_script("batch-7", jobs, str(tmp_path / "slurm-%j.out"), options), jobs


@pytest.mark.parametrize("count", [1, 2, 16])
def test_a_pack_asks_for_one_task_per_job_with_the_jobs_cpus_and_memory_per_cpu(tmp_path, count):
    script, _ = pack(tmp_path, count, num_cpus=3, memory_gb=1.0)
    assert sbatch_options(script)[:6] == ["--job-name=dendro-batch-batch-7", f"--output={tmp_path}/slurm-%j.out",
                                          f"--ntasks={count}", "--no-requeue", "--cpus-per-task=3",
                                          "--mem-per-cpu=342M"]  # 1024 MB over 3 CPUs, rounded up
    assert script.count("srun ") == count


def test_a_pack_takes_the_pools_cluster_options(tmp_path):
    script, _ = pack(tmp_path, 2, SlurmJobSettings(partition="cpu", account="lab", qos="low", time_margin_sec=0,
                                                 extra_sbatch_lines=["--constraint=ib"]))
    assert sbatch_options(script)[6:] == ["--time=0-01:00:00", "--partition=cpu", "--account=lab", "--qos=low",
                                          "--constraint=ib"]


def test_each_packed_job_runs_its_own_script_as_a_named_step_unless_it_was_cancelled(tmp_path):
    script, jobs = pack(tmp_path, 3)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"  # records the name of the step it would start
    srun.write_text('#!/bin/sh\nfor a; do case "$a" in --job-name=*) echo "${a#--job-name=}" >> "$STEPS";; esac; '
                    'done\n')
    srun.chmod(0o755)
    jobs[1][1].cancelled.touch()
    steps = tmp_path / "steps"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", STEPS=str(steps))
    (tmp_path / "pack.sh").write_text(script)
    subprocess.run(["bash", str(tmp_path / "pack.sh")], env=env, check=True, timeout=30)
    assert sorted(steps.read_text().split()) == ["dendro-p1.job0", "dendro-p1.job2"]
    for request, job_dir in jobs:
        assert f"--output={job_dir.stdout} --chdir={job_dir.working} bash {job_dir.batch_script} &" in script
