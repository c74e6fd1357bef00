"""A Dendro job through Prefect on the local pool with container method `apptainer`.

Apptainer cannot be installed where these tests run, so `apptainer` on the worker's PATH is the
stand-in tests/stands/apptainer: it accepts only the documented `apptainer exec` options our command
builder emits (anything else exits 255 and fails the job), checks what Apptainer would check (and that
the env file is private and the job private key is not on the command line), and then runs the same
command another way: on the host, not in a container, with the env-file environment and every path
under a bind's target rewritten to its source. So these tests check the command line and the worker's
handling of it, not Apptainer itself. The app image `docker://dendro-letter-count:local` is only named,
never pulled: the app's executable is the absolute host path of apps/letter_count/main.py, which the
stand-in runs on the host.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.conftest import LETTER_COUNT_APP, REPO, create_letter_count_job
from tests.stack import (
    final_flow_run,
    finished_job,
    running_controller,
    wait_for,
    wait_for_log,
)

STANDS = REPO / "tests" / "stands"
IMAGE = "docker://dendro-letter-count:local"
APP_EXECUTABLE = str(LETTER_COUNT_APP / "main.py")
ARGV_FILE = "apptainer-argv.json"  # written by the stand-in into the source of the /tmp bind
STAND_IN_LOG = "apptainer (test stand-in): ran "


@pytest.fixture(scope="module")
def controller(prefect_stack, tmp_path_factory, sdk_bin):
    """A controller whose dendro-local worker runs jobs with `apptainer` (the stand-in, first on its PATH)."""
    workdir = tmp_path_factory.mktemp("apptainer")
    spec = json.loads((LETTER_COUNT_APP / "spec.json").read_text())
    spec.update(appImage=IMAGE, appExecutable=APP_EXECUTABLE, executable=APP_EXECUTABLE)
    spec_file = workdir / "letter_count_apptainer_spec.json"
    spec_file.write_text(json.dumps(spec))
    with ExitStack() as stack:
        # running_controller gives the worker PATH = sdk_bin + os.environ["PATH"], read when it starts it.
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("PATH", f"{STANDS}{os.pathsep}{os.environ['PATH']}")
            running = stack.enter_context(running_controller(
                prefect_stack, workdir, sdk_bin, container_method="apptainer",
                apps=[{"name": "letter_count", "specUri": spec_file.as_uri()}],
            ))
        yield running


def job_dir(controller, job_id: str) -> Path:
    """Where the worker (its working directory is the controller's workdir) puts the job."""
    return controller.workdir.resolve() / "dendro-jobs" / job_id


def delayed_letter_count_job(controller, delay_sec: float = 5, **overrides) -> str:
    return create_letter_count_job(
        controller.admin, controller.resource_id,
        inputParameters=[{"name": "letter", "value": "o"}, {"name": "delay_sec", "value": delay_sec}], **overrides,
    )


def argv_while_running(controller, job_id: str) -> list[str]:
    """The stand-in's argv, read while the job runs: the dendro SDK empties the job's /tmp at its end."""
    wait_for(lambda: controller.admin.job(job_id)["status"] == "running", f"job {job_id} to run", timeout=60)
    argv_file = job_dir(controller, job_id) / "tmp" / ARGV_FILE
    return json.loads(wait_for(lambda: argv_file.exists() and argv_file.read_text(), f"{argv_file}", timeout=10))


def expected_argv(controller, job_id: str, gpu: bool = False) -> list[str]:
    directory = job_dir(controller, job_id)
    return ["exec", "--bind", f"{directory}/tmp:/tmp", "--pwd", "/tmp/working", "--cleanenv", "--contain",
            "--env-file", str(directory / "secrets" / "env"), *(["--nv"] if gpu else []), IMAGE, APP_EXECUTABLE]


def assert_completed_with_count(controller, job_id: str):
    job = finished_job(controller.admin, job_id)
    assert job["status"] == "completed", job.get("error")
    assert json.loads(controller.admin.output(job_id, "output")) == {"letter": "o", "count": 3}
    flow_run = final_flow_run(job_id)
    assert flow_run.state.is_completed(), flow_run.state
    return flow_run


def test_job_completes_through_the_apptainer_command_line(controller):
    job_id = create_letter_count_job(controller.admin, controller.resource_id, text="hello dendro world", letter="o")
    flow_run = assert_completed_with_count(controller, job_id)
    assert flow_run.job_variables["app_image"] == IMAGE
    log = wait_for_log(flow_run.id, STAND_IN_LOG, "letter_count: 'o' appears 3 times in 18 characters",
                       "(Job private key: [redacted])")
    stand_in_line = next(line for line in log.splitlines() if STAND_IN_LOG in line)
    assert f"{APP_EXECUTABLE} for {IMAGE} on the host in {job_dir(controller, job_id)}/tmp/working" in stand_in_line


def test_command_line_is_exact_and_holds_no_private_key(controller):
    job_id = delayed_letter_count_job(controller)
    argv = argv_while_running(controller, job_id)
    assert Path(argv[0]).name == "apptainer"
    assert argv[1:] == expected_argv(controller, job_id)
    assert not any("JOB_PRIVATE_KEY" in arg for arg in argv)

    env_file = Path(argv[argv.index("--env-file") + 1])
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(env_file.parent.stat().st_mode) == 0o700
    match = re.search(r"^JOB_PRIVATE_KEY=(.*)$", env_file.read_text(), re.MULTILINE)
    assert match, "the env file holds the job private key"
    private_key = shlex.split(match.group(1))[0]
    assert len(private_key) >= 16
    assert not any(private_key in arg for arg in argv)
    assert not [cmdline for cmdline in process_command_lines() if private_key.encode() in cmdline]

    assert_completed_with_count(controller, job_id)
    # The flow run ends after the worker released the job: its secrets are gone.
    assert not env_file.exists()
    assert not env_file.parent.exists()


def test_a_gpu_job_gets_nv(controller):
    job_id = delayed_letter_count_job(controller, requiredResources={"numCpus": 1, "numGpus": 1, "memoryGb": 1,
                                                                     "timeSec": 60})
    argv = argv_while_running(controller, job_id)
    assert argv[1:] == expected_argv(controller, job_id, gpu=True)
    flow_run = assert_completed_with_count(controller, job_id)  # the stand-in ignores --nv
    assert flow_run.job_variables["num_gpus"] == 1
    wait_for_log(flow_run.id, "(--nv ignored)")


def process_command_lines() -> list[bytes]:
    """The command line of every process we can see, as the process list shows them."""
    command_lines = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                command_lines.append(Path(entry.path, "cmdline").read_bytes())
            except OSError:
                continue
    return command_lines
