"""The README's "Running a compute resource", run as a new user types it: every command of its code block,
read from the README itself, against a Prefect server of the test's own and the central stand-in.

Only what cannot run here is left out or stood in for, each said below: `pip install` (the test's own
environments are installed: dendro-prefect's bin and the dendro SDK's are on PATH), the central's URL
(the stand-in's, with its PubSub hub as `--pubsub-origin`; its registration page is the stand-in's approval), and the workers of the slurm,
aws-batch and kubernetes pools (their pools are created and deployed all the same). The configuration
is written into the user's home by `register-compute-resource` while the workers run in another
directory and Prefect runs the subscription flow from the clone: they must all find it there. Then the
same local worker, started by a user without the dendro SDK, fails a job before launching it."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
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


def readme_commands() -> list[str]:
    """The commands of the section's shell block, without comments and background `&`."""
    section = README.read_text().split("## Running a compute resource", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL).group(1)
    commands = [line.split("#", 1)[0].strip().removesuffix("&").strip() for line in block.splitlines()]
    return [command for command in commands if command]


def test_the_readme_commands_run_a_job_with_the_configuration_where_register_wrote_it(tmp_path, sdk_bin):
    commands = readme_commands()
    assert any(c.startswith("dendro-prefect register-compute-resource") for c in commands)
    user_home, workers_dir = tmp_path / "user", tmp_path / "somewhere-else"
    workers_dir.mkdir()
    with ExitStack() as stack:
        api_url = stack.enter_context(prefect_server(tmp_path / "prefect"))
        stack.enter_context(temporary_settings({PREFECT_API_URL: api_url}))
        admin = stack.enter_context(running_stand_in(tmp_path / "central"))
        env = prefect_env(tmp_path / "prefect", api_url)
        env.pop("DENDRO_PREFECT_HOME", None)
        # `pip install dendro==0.2.17` beside dendro-prefect: the SDK's environment first (its python3 runs
        # the app), then dendro-prefect's (its `prefect` and `dendro-prefect` commands).
        env.update(HOME=str(user_home), PATH=os.pathsep.join([str(sdk_bin), str(Path(sys.executable).parent),
                                                                env["PATH"]]))
        registration, workers = None, {}
        for command in commands:
            # The stand-in in place of the public central: its URL, and its PubSub hub in place of PubNub.
            argv = shlex.split(command.replace(PUBLIC_CENTRAL, f"{admin.url} --pubsub-origin {admin.pubsub_origin}"))
            if argv[0] == "pip":
                continue  # installed by the test command
            if argv[:3] == ["prefect", "worker", "start"]:
                pool = argv[argv.index("--pool") + 1]
                if pool in WORKERS_RUN_HERE:
                    workers[pool] = start_worker(stack, argv, workers_dir, env, tmp_path / f"worker-{pool}.log")
                continue
            if argv[:3] == ["prefect", "deployment", "run"]:  # the subscription flow: cancelled at the end
                stack.callback(cancel_subscription_runs, api_url)
            cwd = REPO if argv[:2] == ["prefect", "--no-prompt"] else workers_dir
            result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
            if argv[:2] == ["dendro-prefect", "register-compute-resource"]:
                registration = result.stdout
        link = registration.strip().splitlines()[-1]
        resource_id, code = link.rsplit("/", 2)[-2:]
        assert (user_home / ".dendro-prefect" / ".dendro_compute_resource.json").exists()
        admin.approve(resource_id, code)  # the user opens the link
        admin.set_apps(resource_id, [{"name": "letter_count", "specUri": (LETTER_COUNT_APP / "spec.json").as_uri()}])
        job_id = create_letter_count_job(admin, resource_id)
        job = finished_job(admin, job_id, timeout=120)
        assert job["status"] == "completed", job.get("error")
        assert final_flow_run(job_id).state.is_completed()

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


@pytest.mark.parametrize("missing", ["register-compute-resource", "deploy --all", "worker start --pool local"])
def test_the_readme_block_holds_every_step(missing):
    assert any(missing in command for command in readme_commands())
