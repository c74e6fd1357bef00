"""The local pool's launchers: `CommandLauncher` with real short processes (`true`, `false`, `sleep`), and
`DockerLauncher` against a fake docker SDK client (the container's options and the translation of its state)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from docker.errors import DockerException, ImageNotFound

from dendro_prefect.workers.launch import AppCommand, InfrastructureState, LaunchError
from dendro_prefect.workers.local import docker as docker_launcher
from dendro_prefect.workers.local.command import CommandLauncher
from dendro_prefect.workers.local.docker import DockerLauncher
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


def dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


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
    await eventually(lambda: dead(child), "the app's child to die with its process group")


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


# --- the docker SDK launcher ---------------------------------------------------------------------------------------


class FakeDocker:
    """The docker SDK client calls of `DockerLauncher`: images present or pulled, containers run and listed."""

    def __init__(self, images: set[str] = frozenset({"ghcr.io/lab/app:1"})) -> None:
        self.image_names = set(images)
        self.pull_error: Exception | None = None
        self.run_error: Exception | None = None
        self.runs: list[dict] = []
        self.listed: list = []
        self.pulled: list[str] = []
        self.images = SimpleNamespace(get=self._get_image, pull=self._pull)
        self.containers = SimpleNamespace(run=self._run, list=self._list)

    def _get_image(self, name):
        if name not in self.image_names:
            raise ImageNotFound(f"No such image: {name}")

    def _pull(self, name):
        if self.pull_error is not None:
            raise self.pull_error
        self.pulled.append(name)

    def _run(self, image, **options):
        if self.run_error is not None:
            raise self.run_error
        self.runs.append(dict(options, image=image))
        return SimpleNamespace(id="0123456789abcdef0123")

    def _list(self, all=False, filters=None):
        assert all and filters == {"label": "org.dendro.job-id"}
        return self.listed


@pytest.fixture
def engine(monkeypatch) -> FakeDocker:
    fake = FakeDocker()
    monkeypatch.setattr(docker_launcher.docker, "from_env", lambda: fake)
    return fake


async def test_a_docker_job_mounts_its_tmp_and_key_and_runs_named_labelled_and_limited(tmp_path, engine):
    request = launch_request(tmp_path)
    assert await DockerLauncher().submit(request) == "docker:0123456789ab"
    (run,) = engine.runs
    assert run["image"] == "ghcr.io/lab/app:1" and run["name"] == "dendro-p1-abcdefgh"
    assert run["labels"] == {"org.dendro.job-id": "p1.abcdefgh"} and run["init"] and run["detach"]
    assert run["volumes"] == {str(request.job_dir / "tmp"): {"bind": "/tmp", "mode": "rw"},
                              str(request.job_dir / "secrets"): {"bind": "/run/dendro", "mode": "ro"}}
    assert run["nano_cpus"] == 2_000_000_000 and run["working_dir"] == "/tmp/working"
    assert "network_mode" not in run and "device_requests" not in run
    assert JOB_KEY not in str(run) and (request.job_dir / "secrets" / "job_private_key").read_text() == JOB_KEY


async def test_a_docker_job_of_a_loopback_central_with_gpus_gets_the_host_network_and_all_gpus(tmp_path, engine):
    await DockerLauncher().submit(launch_request(tmp_path, num_gpus=1, env={"DENDRO_URL": "http://127.0.0.1:9"}))
    (run,) = engine.runs
    assert run["network_mode"] == "host"
    (gpus,) = run["device_requests"]
    assert gpus["Count"] == -1 and gpus["Capabilities"] == [["gpu"]]


async def test_a_missing_image_is_pulled_once_and_a_failed_pull_fails_the_launch_with_its_reason(tmp_path, engine):
    engine.image_names.clear()
    await DockerLauncher().submit(launch_request(tmp_path))
    assert engine.pulled == ["ghcr.io/lab/app:1"]
    engine.pull_error = DockerException("pull access denied for ghcr.io/lab/app,\n repository does not exist")
    with pytest.raises(LaunchError, match="^docker image ghcr.io/lab/app:1 is not on this machine and could not be "
                                          "pulled: pull access denied for ghcr.io/lab/app, repository does not exist$"):
        await DockerLauncher().submit(launch_request(tmp_path))


async def test_a_container_docker_refuses_fails_the_launch_and_leaves_no_key(tmp_path, engine):
    engine.run_error = DockerException("invalid mount config")
    request = launch_request(tmp_path)
    with pytest.raises(LaunchError, match="^docker could not start the job: invalid mount config$"):
        await DockerLauncher().submit(request)
    assert not (request.job_dir / "secrets").exists()


async def test_an_unreachable_engine_fails_the_launch_saying_so(tmp_path, monkeypatch):
    def unreachable():
        raise DockerException("Error while fetching server API version")

    monkeypatch.setattr(docker_launcher.docker, "from_env", unreachable)
    with pytest.raises(LaunchError, match="^docker engine unreachable: Error while fetching server API version$"):
        await DockerLauncher().submit(launch_request(tmp_path))


def container(status: str, **state) -> SimpleNamespace:
    return SimpleNamespace(id="0123456789abcdef0123", status=status, attrs={"State": state})


@pytest.mark.parametrize("listed, expected", [
    (container("created"), InfrastructureState("running")),
    (container("running"), InfrastructureState("running")),
    (container("restarting"), InfrastructureState("running")),
    (container("paused"), InfrastructureState("running")),
    (container("exited", ExitCode=0), InfrastructureState("exited", 0)),
    (container("exited", ExitCode=3, Error=""), InfrastructureState("exited", 3)),
    (container("exited", ExitCode=137, OOMKilled=True), InfrastructureState("exited", 137, "out of memory")),
    (container("dead", ExitCode=128, Error="mount failed"), InfrastructureState("exited", 128, "mount failed")),
    (None, InfrastructureState("gone", reason="container not found")),
])
async def test_a_containers_state_becomes_ours(engine, listed, expected):
    engine.listed = [listed] if listed else []
    assert await DockerLauncher().states(["docker:0123456789ab"]) == {"docker:0123456789ab": expected}
