"""The README's "Running a compute resource", run as a new user types it: every command of its two code blocks
(`dendro-prefect up`, then Prefect's commands piece by piece), read from the README itself, for a local-only
resource, against Prefect servers of the test's own and the central stand-in.

Only what cannot run here is left out or stood in for, each said below: `pip install` (the test's own
environments are installed: dendro-prefect's bin and the dendro SDK's are on PATH) and the central's URL (the
stand-in's, with its PubSub hub as `--pubsub-origin`; its registration page is the stand-in's approval). The
configuration is written into the user's home by `register-compute-resource` while the workers run in another
directory and Prefect runs the subscription flow from the clone: they must all find it there. Then the same local
worker, started by a user without the dendro SDK, fails a job before launching it."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelling

from dendro_prefect.child_processes import prefect_env, stop_process
from dendro_prefect.embedded import prefect_server
from dendro_prefect.stand_in.process import running_stand_in
from tests.conftest import LETTER_COUNT_APP, REPO, create_letter_count_job
from tests.stack import final_flow_run, finished_job, wait_for

README = REPO / "README.md"
PUBLIC_CENTRAL = "https://dendro.vercel.app"
WORKERS_RUN_HERE = {"dendro-controller", "local"}


def readme_blocks() -> list[list[str]]:
    """The commands of the section's first two shell blocks (`up`, then piece by piece), without comments and
    background `&`; the later blocks are a server admin's (the scale-out server)."""
    section = README.read_text().split("## Running a compute resource", 1)[1]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)[:2]
    return [[c for c in (line.split("#", 1)[0].strip().removesuffix("&").strip() for line in block.splitlines()) if c]
            for block in blocks]


def readme_commands() -> list[str]:
    return [command for block in readme_blocks() for command in block]


def test_the_readme_commands_run_a_job_with_the_configuration_where_register_wrote_it(tmp_path, sdk_bin):
    """Both ways of the section, one after the other, for one local-only resource: `dendro-prefect up` against the
    test's Prefect server (PREFECT_API_URL), then Prefect's commands piece by piece against a fresh one."""
    up_block, piece_by_piece = readme_blocks()
    assert any(c.startswith("dendro-prefect register-compute-resource") for c in up_block)
    user_home, workers_dir = tmp_path / "user", tmp_path / "somewhere-else"
    workers_dir.mkdir()
    with ExitStack() as stack:
        admin = stack.enter_context(running_stand_in(tmp_path / "central"))
        # `pip install dendro==0.2.17` beside dendro-prefect: the SDK's environment first (its python3 runs
        # the app), then dendro-prefect's (its `prefect` and `dendro-prefect` commands).
        path = os.pathsep.join([str(sdk_bin), str(Path(sys.executable).parent), os.environ["PATH"]])

        def user_env(server: str) -> dict[str, str]:
            env = prefect_env(tmp_path / server, stack.enter_context(prefect_server(tmp_path / server)))
            env.pop("DENDRO_PREFECT_HOME", None)
            return dict(env, HOME=str(user_home), PATH=path)

        env = user_env("prefect-up")
        registration, workers = None, {}
        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
            for command in up_block:
                # The stand-in in place of the public central: its URL, and its PubSub hub in place of PubNub.
                argv = shlex.split(command.replace(PUBLIC_CENTRAL, f"{admin.url} --pubsub-origin {admin.pubsub_origin}"))
                if argv[0] == "pip":
                    continue  # installed by the test command
                if argv[:2] == ["dendro-prefect", "up"]:
                    resource_id = approve(admin, registration, user_home)
                    up_log = tmp_path / "up.log"
                    up = start_worker(stack, argv, workers_dir, env, up_log)
                    wait_for(lambda: "Subscription flow run" in up_log.read_text() or up.poll() is not None,
                             "up to start the subscription flow run", timeout=240, interval=0.5)
                    job_completes(admin, resource_id)
                    up.send_signal(signal.SIGINT)
                    assert up.wait(timeout=120) == 0, up_log.read_text()
                    continue
                result = subprocess.run(argv, cwd=workers_dir, env=env, capture_output=True, text=True, timeout=300)
                assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
                if argv[:2] == ["dendro-prefect", "register-compute-resource"]:
                    registration = result.stdout

        env = user_env("prefect-pieces")
        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
            for command in piece_by_piece:
                argv = shlex.split(command)
                if argv[:3] == ["prefect", "worker", "start"]:
                    pool = argv[argv.index("--pool") + 1]
                    assert pool in WORKERS_RUN_HERE, f"a local-only resource needs no worker of pool {pool}"
                    workers[pool] = start_worker(stack, argv, workers_dir, env, tmp_path / f"worker-{pool}.log")
                    continue
                if argv[:3] == ["prefect", "deployment", "run"]:  # the subscription flow: cancelled at the end
                    stack.callback(cancel_subscription_runs, env["PREFECT_API_URL"])
                # From the clone, as the README says: prefect.yaml and deployments/ are there.
                result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
                assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
            job_completes(admin, resource_id)

            # The same worker started by a user without the dendro SDK: the job is failed before its launch,
            # with a reason that names the missing command, instead of failing in the SDK after it.
            stop_process(workers["local"])
            without_sdk = dict(env, PATH=env["PATH"].replace(f"{sdk_bin}{os.pathsep}", ""))
            start_worker(stack, ["prefect", "worker", "start", "--pool", "local"], workers_dir, without_sdk,
                         tmp_path / "worker-local-without-sdk.log")
            job_id = create_letter_count_job(admin, resource_id)
            job = finished_job(admin, job_id, timeout=120)
            assert job["status"] == "failed" and "the `dendro` command of the dendro SDK is not on the PATH" in job["error"]
            flow_run = final_flow_run(job_id)
            assert flow_run.state.is_failed() and flow_run.state.message == job["error"]
            assert job.get("timestampStarted") is None  # the app never ran


def approve(admin, registration: str, user_home: Path) -> str:
    """The user opens the printed link; the resource's apps are set in the central's page. Returns its id."""
    link = registration.strip().splitlines()[-1]
    resource_id, code = link.rsplit("/", 2)[-2:]
    assert (user_home / ".dendro-prefect" / ".dendro_compute_resource.json").exists()
    admin.approve(resource_id, code)
    admin.set_apps(resource_id, [{"name": "letter_count", "specUri": (LETTER_COUNT_APP / "spec.json").as_uri()}])
    return resource_id


def job_completes(admin, resource_id: str) -> None:
    job_id = create_letter_count_job(admin, resource_id)
    job = finished_job(admin, job_id, timeout=120)
    assert job["status"] == "completed", job.get("error")
    assert final_flow_run(job_id).state.is_completed()


def start_worker(stack: ExitStack, argv: list[str], cwd: Path, env: dict, log_path: Path) -> subprocess.Popen:
    log = stack.enter_context(open(log_path, "ab"))
    worker = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    stack.callback(stop_process, worker)
    return worker


def cancel_subscription_runs(api_url: str) -> None:
    async def cancel() -> list:
        async with get_client() as client:
            runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(
                name=DeploymentFilterName(any_=["subscription"])))
            for flow_run in runs:
                if not flow_run.state.is_final():
                    await client.set_flow_run_state(flow_run.id, Cancelling(), force=True)
            return [r.id for r in runs]

    async def ended(ids: list) -> bool:
        async with get_client() as client:
            return all([(await client.read_flow_run(i)).state.is_final() for i in ids])

    with temporary_settings({PREFECT_API_URL: api_url}):
        ids = asyncio.run(cancel())
        wait_for(lambda: asyncio.run(ended(ids)), "the subscription flow run to end", 60)


@pytest.mark.parametrize("missing", ["register-compute-resource", "dendro-prefect up", "deploy --name subscription",
                                     "worker start --pool local"])
def test_the_readme_block_holds_every_step(missing):
    assert any(missing in command for command in readme_commands())
