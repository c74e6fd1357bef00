"""The local pool's launcher, `CommandLauncher`, with real short processes (`true`, `false`, `sleep`), and its
docker jobs against a fake `docker` command on the PATH (no engine): the image looked up or pulled before the
launch, the `docker run` command of `docker_cli.py`, and the container stopped by `docker stop` on a kill."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from dendro_prefect.workers.docker_cli import docker_command, ensure_image
from dendro_prefect.workers.job_dir import JobDirectory
from dendro_prefect.workers.launch import AppCommand, InfrastructureState, LaunchError
from dendro_prefect.workers.local import LocalJobConfiguration, LocalWorker
from dendro_prefect.workers.local.command import CommandLauncher
from tests.conftest import process_alive
from tests.unit.fakes import JOB_KEY, eventually, launch_request

pytestmark = pytest.mark.anyio


def runs(*argv: str, env: dict | None = None, key_in_env: bool = True):
    """A command builder that starts `argv`."""
    return lambda request, job_dir: AppCommand(list(argv), dict(env or {}), key_in_env=key_in_env)


async def ended(launcher, infrastructure_id: str) -> InfrastructureState:
    """The process's state once it is no longer running (a deadline poll)."""
    deadline = time.monotonic() + 10
    while (state := (await launcher.states([infrastructure_id]))[infrastructure_id]).phase == "running":
        assert time.monotonic() < deadline, "the process did not end"
        await asyncio.sleep(0.01)
    return state


def option(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, value in enumerate(argv[:-1]) if value == name]


@pytest.mark.parametrize("argv, exit_code", [(["true"], 0), (["false"], 1), (["sh", "-c", "exit 42"], 42)])
async def test_a_process_that_ended_exited_with_its_code(tmp_path, argv, exit_code):
    launcher = CommandLauncher("process", runs(*argv))
    infrastructure_id = await launcher.submit(launch_request(tmp_path))
    assert infrastructure_id.startswith("process:")
    assert await ended(launcher, infrastructure_id) == InfrastructureState("exited", exit_code)


async def test_a_running_process_is_running_until_killed_with_everything_it_started(tmp_path):
    launcher = CommandLauncher("process", runs("sh", "-c", "sleep 30 & echo $! > child.pid; wait"))
    request = launch_request(tmp_path)
    infrastructure_id = await launcher.submit(request)
    child_pid_file = request.job_dir / "tmp" / "working" / "child.pid"
    child = int(await eventually(lambda: child_pid_file.exists() and child_pid_file.read_text().strip(), "the child"))
    assert (await launcher.states([infrastructure_id]))[infrastructure_id] == InfrastructureState("running")
    await launcher.kill(infrastructure_id)
    assert (await launcher.states([infrastructure_id]))[infrastructure_id] == InfrastructureState("exited", -15)
    await eventually(lambda: not process_alive(child), "the app's child to die with its process group")


async def test_the_app_gets_its_environment_and_key_but_not_the_workers_prefect_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    monkeypatch.setenv("WORKER_ONLY", "inherited")
    launcher = CommandLauncher("process", runs("sh", "-c", 'echo "key=$JOB_PRIVATE_KEY"; echo "app=$APP_SETTING"; '
                                                           'echo "inherited=$WORKER_ONLY"; env | grep -c ^PREFECT_',
                                               env={"APP_SETTING": "from the command"}))
    infrastructure_id = await launcher.submit(launch_request(tmp_path))
    await ended(launcher, infrastructure_id)
    assert await launcher.read_logs(infrastructure_id) == [f"key={JOB_KEY}", "app=from the command",
                                                          "inherited=inherited", "0"]


async def test_a_command_that_carries_the_key_itself_gets_none_from_the_launcher(tmp_path):
    launcher = CommandLauncher("apptainer", runs("sh", "-c", 'echo "key=${JOB_PRIVATE_KEY:-none}"', key_in_env=False))
    infrastructure_id = await launcher.submit(launch_request(tmp_path))
    assert infrastructure_id.startswith("apptainer:")
    await ended(launcher, infrastructure_id)
    assert await launcher.read_logs(infrastructure_id) == ["key=none"]


async def test_the_key_is_never_on_the_process_command_line(tmp_path):
    launcher = CommandLauncher("process", runs("sleep", "30"))
    infrastructure_id = await launcher.submit(launch_request(tmp_path))
    pid = int(infrastructure_id.split(":")[1])
    try:
        # Until the child has exec'd, /proc shows the worker's own command line and environment.
        deadline = time.monotonic() + 10
        while not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep") and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert JOB_KEY.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert JOB_KEY.encode() in Path(f"/proc/{pid}/environ").read_bytes()  # where the SDK reads it
    finally:
        await launcher.kill(infrastructure_id)


async def test_the_app_runs_in_the_jobs_working_directory_its_output_in_stdout_log(tmp_path):
    launcher = CommandLauncher("process", runs("sh", "-c", "pwd; echo to stderr >&2"))
    request = launch_request(tmp_path)
    infrastructure_id = await launcher.submit(request)
    await ended(launcher, infrastructure_id)
    assert (request.job_dir / "stdout.log").read_text().splitlines() == [str(request.job_dir / "tmp" / "working"),
                                                                        "to stderr"]


async def test_an_executable_that_cannot_start_fails_the_launch_and_leaves_no_key(tmp_path):
    launcher = CommandLauncher("process", runs("/nonexistent/app"))
    request = launch_request(tmp_path)
    (request.job_dir / "secrets").mkdir(parents=True)
    (request.job_dir / "secrets" / "env").write_text(f"JOB_PRIVATE_KEY={JOB_KEY}")
    with pytest.raises(LaunchError, match="^cannot start /nonexistent/app: No such file or directory$"):
        await launcher.submit(request)
    assert not (request.job_dir / "secrets").exists()


async def test_a_process_this_worker_did_not_start_or_take_up_is_gone(tmp_path):
    states = await CommandLauncher("process", runs("true")).states(["process:1"])
    assert states == {"process:1": InfrastructureState("gone", reason="not started by this worker")}


async def test_a_process_taken_up_after_a_restart_runs_until_it_is_gone_without_an_exit_code(tmp_path):
    orphan = subprocess.Popen(["sleep", "30"], start_new_session=True)
    launcher = CommandLauncher("process", runs("true"))
    infrastructure_id = f"process:{orphan.pid}"
    await launcher.attach(infrastructure_id, launch_request(tmp_path))
    assert (await launcher.states([infrastructure_id]))[infrastructure_id] == InfrastructureState("running")
    await launcher.kill(infrastructure_id)  # by its process group, as it is no child of this launcher
    orphan.wait(timeout=10)
    state = (await launcher.states([infrastructure_id]))[infrastructure_id]
    assert state.phase == "exited" and state.exit_code is None
    assert state.reason.startswith("the app's process ended while no worker watched it")


async def test_killing_a_process_that_is_gone_already_is_no_error(tmp_path):
    launcher = CommandLauncher("process", runs("true"))
    infrastructure_id = await launcher.submit(launch_request(tmp_path))
    await ended(launcher, infrastructure_id)
    await launcher.kill(infrastructure_id)
    assert (await launcher.states([infrastructure_id]))[infrastructure_id] == InfrastructureState("exited", 0)


async def test_release_forgets_the_process_and_removes_its_secrets(tmp_path):
    launcher = CommandLauncher("process", runs("true"))
    request = launch_request(tmp_path)
    infrastructure_id = await launcher.submit(request)
    (request.job_dir / "secrets").mkdir()
    await ended(launcher, infrastructure_id)
    await launcher.release(infrastructure_id)
    assert not (request.job_dir / "secrets").exists()
    assert (await launcher.states([infrastructure_id]))[infrastructure_id].phase == "gone"


# --- docker, through its CLI ----------------------------------------------------------------------------------------

FAKE_DOCKER = r"""#!/bin/sh
# The docker CLI's answers to the calls of a docker job; its state in $FAKE_DOCKER_STATE.
state="$FAKE_DOCKER_STATE"
printf '%s\n' "$*" >> "$state/calls"
eval "last=\${$#}"
case "$1" in
image)
  if [ -e "$state/unreachable" ]; then
    echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?" >&2
    exit 1
  fi
  grep -qxF "$last" "$state/images" 2>/dev/null && exit 0
  echo "Error response from daemon: no such image: $last: No such image: $last" >&2
  exit 1;;
pull)
  if [ -e "$state/pull_refused" ]; then
    echo "Using default tag: latest" >&2
    cat "$state/pull_refused" >&2
    exit 1
  fi
  echo "$last" >> "$state/images";;
run)
  echo "the app's output"
  i=0
  while [ ! -e "$state/stopped" ] && [ $i -lt 400 ]; do sleep 0.025; i=$((i + 1)); done
  exit 143;;
stop)
  touch "$state/stopped";;
esac
"""


@pytest.fixture
def fake_docker(tmp_path, monkeypatch) -> Path:
    """A `docker` command first on the PATH; returns its state directory (`images` it has, `calls` it got)."""
    bin_dir, state = tmp_path / "bin", tmp_path / "docker-state"
    bin_dir.mkdir()
    state.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_DOCKER_STATE", str(state))
    return state


def calls(state: Path) -> list[str]:
    return (state / "calls").read_text().splitlines() if (state / "calls").exists() else []


def docker_launcher() -> CommandLauncher:
    """The local worker's launcher of an app with an image under container method docker."""
    worker = LocalWorker(work_pool_name="local-unit")
    return worker.launcher(LocalJobConfiguration(container_method="docker", app_image="ghcr.io/lab/app:1"))


def test_an_image_on_this_machine_is_only_looked_up(fake_docker):
    (fake_docker / "images").write_text("ghcr.io/lab/app:1\n")
    ensure_image("ghcr.io/lab/app:1")
    assert calls(fake_docker) == ["image inspect --format {{.Id}} ghcr.io/lab/app:1"]


def test_a_missing_image_is_pulled_once(fake_docker):
    ensure_image("ghcr.io/lab/app:1")
    ensure_image("ghcr.io/lab/app:1")
    assert [call for call in calls(fake_docker) if call.startswith("pull")] == ["pull ghcr.io/lab/app:1"]


def test_an_image_docker_cannot_pull_fails_with_dockers_reason_in_one_line(fake_docker):
    (fake_docker / "pull_refused").write_text("Error response from daemon: pull access denied for ghcr.io/lab/app, "
                                              "repository does not exist\n")
    with pytest.raises(LaunchError, match="^docker image ghcr.io/lab/app:1 is not on this machine and could not be "
                                          "pulled: pull access denied for ghcr.io/lab/app, repository does not exist$"):
        ensure_image("ghcr.io/lab/app:1")


def test_an_engine_that_does_not_answer_fails_saying_so(fake_docker):
    (fake_docker / "unreachable").touch()
    with pytest.raises(LaunchError, match="^docker could not look up image ghcr.io/lab/app:1 on this machine: Cannot "
                                          "connect to the Docker daemon at .*Is the docker daemon running\\?$"):
        ensure_image("ghcr.io/lab/app:1")
    assert not any(call.startswith("pull") for call in calls(fake_docker))


def test_a_machine_without_the_docker_cli_fails_saying_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(LaunchError, match="^there is no `docker` command on the worker's PATH"):
        ensure_image("ghcr.io/lab/app:1")


async def output_of(launcher: CommandLauncher, infrastructure_id: str) -> list[str]:
    """The first lines of a running job's output in the flow-run log."""
    deadline = time.monotonic() + 10
    while not (lines := await launcher.read_logs(infrastructure_id)) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return lines


async def test_a_local_docker_job_is_the_docker_run_command_of_a_slurm_node_limits_included(tmp_path, fake_docker):
    launcher, request = docker_launcher(), launch_request(tmp_path)
    infrastructure_id = await launcher.submit(request)
    try:
        assert infrastructure_id.startswith("docker:")
        assert await output_of(launcher, infrastructure_id) == ["the app's output"]
        expected = docker_command(request, JobDirectory(request.job_dir)).argv
        assert option(expected, "--cpus") == ["2"] and option(expected, "--memory") == ["4096m"]
        assert calls(fake_docker) == ["image inspect --format {{.Id}} ghcr.io/lab/app:1", "pull ghcr.io/lab/app:1",
                                      " ".join(expected[1:])]
    finally:
        await launcher.kill(infrastructure_id)


async def test_a_local_docker_job_whose_image_cannot_be_had_is_never_launched(tmp_path, fake_docker):
    (fake_docker / "pull_refused").write_text("Error: manifest unknown\n")
    request = launch_request(tmp_path)
    with pytest.raises(LaunchError, match="^docker image ghcr.io/lab/app:1 is not on this machine and could not be "
                                          "pulled: manifest unknown$"):
        await docker_launcher().submit(request)
    assert not any(call.startswith("run") for call in calls(fake_docker)) and not request.job_dir.exists()


async def test_the_key_is_in_neither_the_docker_clients_command_line_nor_its_environment(tmp_path, fake_docker):
    launcher, request = docker_launcher(), launch_request(tmp_path)
    infrastructure_id = await launcher.submit(request)
    pid = int(infrastructure_id.split(":")[1])
    try:
        await eventually(lambda: b"run" in Path(f"/proc/{pid}/cmdline").read_bytes(), "the docker client")
        assert JOB_KEY.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert JOB_KEY.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
        assert (request.job_dir / "secrets" / "job_private_key").read_text() == JOB_KEY  # mounted, read in there
    finally:
        await launcher.kill(infrastructure_id)


@pytest.mark.parametrize("watched", ["launched", "taken up after a restart", "not followed"])
async def test_killing_a_docker_job_stops_its_container_whichever_worker_kills_it(tmp_path, fake_docker, watched):
    """Its `docker run` client would end on a signal and leave the container running: `docker stop` first, also
    from a restarted worker, which finds how to stop it in the job directory of the client's process."""
    launcher, request = docker_launcher(), launch_request(tmp_path)
    infrastructure_id = await launcher.submit(request)
    await eventually(lambda: any(call.startswith("run") for call in calls(fake_docker)), "docker run")
    if watched != "launched":
        launcher = docker_launcher()  # a restarted worker's
        if watched == "taken up after a restart":
            await launcher.attach(infrastructure_id, request)
    await launcher.kill(infrastructure_id)
    assert "stop --time 5 dendro-p1-abcdefgh" in calls(fake_docker)
    await eventually(lambda: not process_alive(int(infrastructure_id.split(":")[1])), "the docker client to end")
