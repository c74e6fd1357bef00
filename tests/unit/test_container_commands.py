"""How a job's app is started in a container: the `docker run` and `apptainer exec` command lines, the files
that carry its environment and key, and what every container method agrees on (paths, names, network)."""

from __future__ import annotations

import stat
import subprocess

import pytest

from dendro_prefect.workers.apptainer import apptainer_command_builder
from dendro_prefect.workers.commands import command_builder
from dendro_prefect.workers.containers import container_environment, container_name, uses_loopback, wrapped
from dendro_prefect.workers.docker_cli import docker_command
from dendro_prefect.workers.job_dir import JobDirectory
from dendro_prefect.workers.launch import LaunchError
from tests.unit.fakes import JOB_KEY, launch_request


def docker(tmp_path, **changes):
    request = launch_request(tmp_path, **changes)
    job_dir = JobDirectory.create(request.job_dir)
    return docker_command(request, job_dir), job_dir


def apptainer(tmp_path, executable: str = "apptainer", **changes):
    request = launch_request(tmp_path, **changes)
    job_dir = JobDirectory.create(request.job_dir)
    return apptainer_command_builder(executable)(request, job_dir), job_dir


def option(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, value in enumerate(argv[:-1]) if value == name]


# --- docker --------------------------------------------------------------------------------------------------------


def test_docker_runs_the_app_removed_at_its_end_named_and_labelled_for_its_job(tmp_path):
    command, job_dir = docker(tmp_path)
    argv = command.argv
    assert argv[:5] == ["docker", "run", "--rm", "--init", "--name"]
    assert option(argv, "--name") == ["dendro-p1-abcdefgh"]
    assert option(argv, "--label") == ["org.dendro.job-id=p1.abcdefgh"]
    assert option(argv, "--volume") == [f"{job_dir.cleanup}:/tmp", f"{job_dir.secrets}:/run/dendro:ro"]
    assert option(argv, "--workdir") == ["/tmp/working"]
    assert argv[-5:] == ["ghcr.io/lab/app:1", "/bin/sh", "-c",
                         'JOB_PRIVATE_KEY="$(cat /run/dendro/job_private_key)" exec "$0" "$@"', "/app/main.py"]


@pytest.mark.parametrize("num_cpus, memory_gb, cpus, memory", [(2, 4.0, "2", "4096m"), (0, 0.001, "1", "6m"),
                                                               (16, 0.5, "16", "512m")])
def test_docker_limits_cpus_and_memory_to_the_jobs_resources(tmp_path, num_cpus, memory_gb, cpus, memory):
    command, _ = docker(tmp_path, num_cpus=num_cpus, memory_gb=memory_gb)
    assert option(command.argv, "--cpus") == [cpus] and option(command.argv, "--memory") == [memory]


@pytest.mark.parametrize("num_gpus, expected", [(0, []), (1, ["all"]), (4, ["all"])])
def test_docker_gives_a_gpu_job_all_gpus(tmp_path, num_gpus, expected):
    assert option(docker(tmp_path, num_gpus=num_gpus)[0].argv, "--gpus") == expected


@pytest.mark.parametrize("url, host_network", [
    ("http://127.0.0.1:8000", True), ("http://localhost:8000", True), ("http://[::1]:8000", True),
    ("http://127.1.2.3", True), ("https://dendro.vercel.app", False), ("http://10.0.0.5:8000", False),
])
def test_docker_uses_the_host_network_only_for_a_central_on_loopback(tmp_path, url, host_network):
    command, _ = docker(tmp_path, central_url=url)
    assert option(command.argv, "--network") == (["host"] if host_network else [])
    assert uses_loopback(url) == host_network


def test_docker_passes_every_variable_in_a_private_env_file_and_the_key_in_a_mounted_one(tmp_path):
    command, job_dir = docker(tmp_path)
    (env_file,) = option(command.argv, "--env-file")
    assert env_file == str(job_dir.secrets / "env") and stat.S_IMODE(job_dir.secrets.stat().st_mode) == 0o700
    assert stat.S_IMODE((job_dir.secrets / "env").stat().st_mode) == 0o600
    lines = (job_dir.secrets / "env").read_text().splitlines()
    assert "JOB_ID=p1.abcdefgh" in lines and "DENDRO_JOB_CLEANUP_DIR=/tmp" in lines
    assert (job_dir.secrets / "job_private_key").read_text() == JOB_KEY
    assert JOB_KEY not in " ".join(command.argv) and JOB_KEY not in "\n".join(lines)
    assert command.env == {} and not command.key_in_env


def test_docker_refuses_a_value_its_env_file_cannot_hold(tmp_path):
    with pytest.raises(LaunchError, match="docker's --env-file cannot hold a value with a line break"):
        docker(tmp_path, env={"NOTE": "two\nlines"})


def test_docker_says_how_to_stop_the_container_its_client_leaves_behind(tmp_path):
    assert docker(tmp_path)[0].stop_argv == ["docker", "stop", "--time", "5", "dendro-p1-abcdefgh"]


# --- apptainer / singularity ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("executable", ["apptainer", "singularity"])
def test_apptainer_execs_the_app_contained_with_the_jobs_tmp_and_working_directory(tmp_path, executable):
    command, job_dir = apptainer(tmp_path, executable)
    assert command.argv == [executable, "exec", "--bind", f"{job_dir.cleanup}:/tmp", "--pwd", "/tmp/working",
                            "--cleanenv", "--contain", "--env-file", str(job_dir.secrets / "env"),
                            "docker://ghcr.io/lab/app:1", "/app/main.py"]
    assert command.env == {} and not command.key_in_env and command.stop_argv is None


@pytest.mark.parametrize("num_gpus, nv", [(0, False), (1, True)])
def test_apptainer_gives_a_gpu_job_the_nvidia_driver(tmp_path, num_gpus, nv):
    assert ("--nv" in apptainer(tmp_path, num_gpus=num_gpus)[0].argv) == nv


@pytest.mark.parametrize("image, expected", [
    ("ghcr.io/lab/app:1", "docker://ghcr.io/lab/app:1"),
    ("python:3.11", "docker://python:3.11"),
    ("/images/app.sif", "/images/app.sif"),
    ("oras://ghcr.io/lab/app:1", "oras://ghcr.io/lab/app:1"),
    ("docker://ghcr.io/lab/app:1", "docker://ghcr.io/lab/app:1"),
])
def test_apptainer_pulls_registry_images_through_docker_and_takes_sif_files_and_urls_as_they_are(tmp_path, image,
                                                                                                  expected):
    assert apptainer(tmp_path, app_image=image)[0].argv[-2] == expected


@pytest.mark.parametrize("value", ["plain", "two words", "it's", "$HOME `id`", 'a "quoted" b', ""])
def test_the_apptainer_env_file_gives_every_value_verbatim_the_key_included(tmp_path, value):
    command, job_dir = apptainer(tmp_path, env={"VALUE": value})
    env_file = job_dir.secrets / "env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600 and JOB_KEY not in " ".join(command.argv)
    read = subprocess.run(["sh", "-c", f'. {env_file}; printf "%s|%s" "$VALUE" "$JOB_PRIVATE_KEY"'],
                          capture_output=True, text=True, check=True).stdout
    assert read == f"{value}|{JOB_KEY}"


# --- what every container method shares ----------------------------------------------------------------------------


def test_a_containers_environment_points_the_sdk_at_the_containers_tmp(tmp_path):
    env = container_environment(launch_request(tmp_path))
    assert env == {"JOB_ID": "p1.abcdefgh", "DENDRO_URL": "https://central.example", "DENDRO_JOB_CLEANUP_DIR": "/tmp",
                   "DENDRO_JOB_WORKING_DIR": "/tmp/working", "KACHERY_CLOUD_DIR": "/tmp/.kachery-cloud"}
    assert "JOB_PRIVATE_KEY" not in env


@pytest.mark.parametrize("job_id, name", [("p1.abcdefgh", "dendro-p1-abcdefgh"), ("a.b.c", "dendro-a-b-c"),
                                          ("plain", "dendro-plain")])
def test_container_names_come_from_the_job_id_without_dots(job_id, name):
    assert container_name(job_id) == name


def test_a_wrapper_passes_the_apps_command_line_as_its_arguments():
    assert wrapped('exec "$0" "$@"', ["/app/main.py"]) == ["/bin/sh", "-c", 'exec "$0" "$@"', "/app/main.py"]
    assert subprocess.run(wrapped('exec "$0" "$@"', ["echo", "one word", "two"]), capture_output=True,
                          text=True).stdout == "one word two\n"


@pytest.mark.parametrize("method", ["apptainer", "singularity", "docker"])
def test_each_container_method_gets_its_command_builder(tmp_path, method):
    request = launch_request(tmp_path)
    assert command_builder(method)(request, JobDirectory.create(request.job_dir)).argv[0] == method
