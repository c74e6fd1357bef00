"""How an app is started, decided without a server: image-less apps run as plain processes under any
container method (as the original daemon runs them), and only when the dendro SDK's command is there."""

import os
import stat
from pathlib import Path

import pytest

from dendro_prefect.workers.commands import command_builder, container_method_for, plain_command
from dendro_prefect.workers.job_dir import JobDirectory
from dendro_prefect.workers.launch import LaunchError, LaunchRequest
from dendro_prefect.workers.local import LocalJobConfiguration, LocalWorker
from dendro_prefect.workers.local.command import CommandLauncher


def request(tmp_path: Path, image: str | None = None, env: dict | None = None, sdk_bin_dir: str = "") -> LaunchRequest:
    return LaunchRequest(
        job_id="p.j", job_private_key="k" * 32, app_name="letter_count", app_image=image, app_executable="/app/main.py",
        env=env or {"JOB_ID": "p.j"}, num_cpus=1, num_gpus=0, memory_gb=1.0, time_limit_sec=None,
        job_dir=tmp_path / "job", sdk_bin_dir=sdk_bin_dir)


def fake_sdk(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    command = directory / "dendro"
    command.write_text("#!/bin/sh\n")
    command.chmod(command.stat().st_mode | stat.S_IXUSR)
    return directory


@pytest.mark.parametrize("method", ["docker", "apptainer", "singularity", "none"])
def test_an_app_without_image_runs_as_a_plain_process_whatever_the_container_method(method):
    assert container_method_for(method, None) == "none"
    assert container_method_for(method, "") == "none"
    assert container_method_for(method, "ghcr.io/lab/app:1") == method


@pytest.mark.parametrize("method", ["docker", "apptainer", "singularity"])
def test_the_slurm_command_of_an_imageless_app_is_the_plain_one(tmp_path, method):
    sdk = fake_sdk(tmp_path / "sdk")
    build = command_builder(container_method_for(method, None))
    command = build(request(tmp_path, env={"PATH": str(sdk)}), JobDirectory.create(tmp_path / "job"))
    assert command.argv == ["/app/main.py"] and command.key_in_env


def test_the_local_worker_runs_an_imageless_app_as_a_process_even_with_docker(tmp_path):
    worker = LocalWorker(work_pool_name="local-unit")
    imageless = LocalJobConfiguration(container_method="docker", app_image=None)
    assert worker.launcher(imageless).kind == "process"
    assert worker.launcher(LocalJobConfiguration(container_method="docker", app_image="app:1")).kind == "docker"
    with pytest.raises(LaunchError, match="unknown container method 'podman'"):
        worker.launcher(LocalJobConfiguration(container_method="podman", app_image="app:1"))


def test_a_missing_dendro_command_refuses_the_launch_and_names_it(tmp_path):
    with pytest.raises(LaunchError, match=r"the `dendro` command of the dendro SDK is not on the PATH of app "
                                          r"letter_count.*sdk_bin_dir"):
        plain_command(request(tmp_path, env={"PATH": str(tmp_path / "empty")}), JobDirectory.create(tmp_path / "job"))


def test_the_worker_path_is_the_apps_unless_the_pool_sets_one(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_sdk(tmp_path / "worker-bin")))
    command = plain_command(request(tmp_path), JobDirectory.create(tmp_path / "job"))
    assert "PATH" not in command.env  # the process inherits the worker's
    with pytest.raises(LaunchError, match="dendro"):
        plain_command(request(tmp_path, env={"PATH": "/nonexistent"}), JobDirectory.create(tmp_path / "job"))


def test_sdk_bin_dir_comes_first_on_the_apps_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin")
    sdk = fake_sdk(tmp_path / "sdk")
    command = plain_command(request(tmp_path, sdk_bin_dir=str(sdk)), JobDirectory.create(tmp_path / "job"))
    assert command.env["PATH"] == f"{sdk}{os.pathsep}/usr/bin"
    assert command.env["DENDRO_JOB_CLEANUP_DIR"] == str(tmp_path / "job" / "tmp")


def test_the_local_worker_takes_the_container_method_of_the_configuration_file(tmp_path):
    from dendro_prefect.config import ComputeResourceConfig
    from dendro_prefect.protocol.signing import generate_keypair

    resource_id, private_key = generate_keypair()
    config_file = tmp_path / "c.json"
    ComputeResourceConfig(compute_resource_id=resource_id, compute_resource_private_key=private_key,
                          container_method="docker").write(config_file)
    worker = LocalWorker(work_pool_name="local-unit")
    configuration = LocalJobConfiguration(config_file=str(config_file), app_image="app:1")
    launcher = worker.launcher(configuration)
    assert isinstance(launcher, CommandLauncher) and launcher.kind == "docker"
