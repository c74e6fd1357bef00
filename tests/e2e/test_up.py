"""`dendro-prefect up` as a lab admin runs it, in the directory of a registered resource's configuration: its own
Prefect server (PostgreSQL), the pools of the resource's run methods only, their workers and the subscription
flow; a job submitted at the stand-in completes; Ctrl-C stops every process it started (by PID); a second `up`
creates no pool or deployment again and takes up the job that ran on while it was down.

Real parts: the stand-in central, `dendro-prefect up` as a process with its own Prefect server, the real SDK.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import requests

from dendro_prefect.child_processes import prefect_env
from dendro_prefect.embedded_controller import cancel_subscription_run, register_resource
from dendro_prefect.stand_in.process import running_stand_in
from tests.conftest import create_letter_count_job, parent_pids, process_alive, wait_for
from tests.e2e.test_status import heartbeat_of
from tests.original_daemon import processes_marked
from tests.secrets_scan import record_secret
from tests.stack import finished_job, letter_count_spec_uri, prefect_api

DENDRO_PREFECT = str(Path(sys.executable).with_name("dendro-prefect"))
UI_LINE = re.compile(r"Prefect UI: (http://127\.0\.0\.1:\d+)")
JOB_POOLS = {"local"}  # the resource's available_job_run_methods: local only


def descendants(pid: int) -> set[int]:
    """The processes under `pid` now."""
    parents = parent_pids()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


class Up:
    """A running `dendro-prefect up`: its process, its output so far, its Prefect API."""

    def __init__(self, process: subprocess.Popen, output: Path) -> None:
        self.process, self.output = process, output
        match = wait_for(lambda: UI_LINE.search(self.text()) or self.failed(), "up to print the Prefect UI's URL",
                         timeout=240, interval=0.5)
        self.api = f"{match.group(1)}/api"

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def failed(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"up exited with {self.process.returncode}:\n{self.text()}")

    def ready(self) -> bool:
        self.failed()
        return "Subscription flow run" in self.text()

    def read(self, path: str) -> list[dict]:
        answer = requests.post(f"{self.api}{path}", json={}, timeout=30)
        answer.raise_for_status()
        return answer.json()


@contextmanager
def running_up(directory: Path, env: dict[str, str], name: str) -> Iterator[Up]:
    output = directory / f"{name}.out"
    with open(output, "wb") as out:
        process = subprocess.Popen([DENDRO_PREFECT, "up", "--config", str(directory / ".dendro_compute_resource.json"),
                                    "--concurrency-limit", "local=4"], cwd=directory, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        up = Up(process, output)
        wait_for(up.ready, "up to start the subscription flow run", timeout=240, interval=0.5)
        yield up
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def stop(up: Up) -> set[int]:
    """Ctrl-C, as an admin stops it; returns the processes it had started."""
    started = descendants(up.process.pid)
    assert started, "up started no process"
    begun = time.monotonic()
    up.process.send_signal(signal.SIGINT)
    assert up.process.wait(timeout=120) == 0, up.text()
    print(f"up stopped {len(started)} processes in {time.monotonic() - begun:.1f} s")
    return started


def test_up_runs_a_local_only_resource_and_a_second_up_creates_nothing_new(tmp_path, sdk_bin):
    directory = tmp_path / "resource"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PATH"] = f"{sdk_bin}{os.pathsep}{env['PATH']}"  # the SDK of apps without an image
    with running_stand_in(tmp_path / "central") as admin:
        config = register_resource(admin, directory, [{"name": "letter_count",
                                                       "specUri": letter_count_spec_uri(directory)}])
        record_secret(config.compute_resource_private_key.get_secret_value(), "compute-resource-key")
        with running_up(directory, env, "first") as up:
            pools = {pool["name"]: pool for pool in up.read("/work_pools/filter")}
            assert set(pools) == {"dendro-controller"} | JOB_POOLS  # no Slurm, AWS or Kubernetes pool
            assert pools["local"]["concurrency_limit"] == 4
            deployments = {d["name"]: d["id"] for d in up.read("/deployments/filter")}
            assert set(deployments) == {"subscription"} | JOB_POOLS
            job_id = create_letter_count_job(admin, config.compute_resource_id)
            assert finished_job(admin, job_id, timeout=120)["status"] == "completed"
            # Prefect's database (the blocks' credentials) beside the configuration: no one else reads either.
            assert stat.S_IMODE((directory / "prefect").stat().st_mode) & 0o066 == 0  # o+x: PostgreSQL's user, as root
            assert stat.S_IMODE((directory / ".dendro_compute_resource.json").stat().st_mode) == 0o600
            # A job that outlives this `up`: the next one takes it up.
            slow_id = create_letter_count_job(admin, config.compute_resource_id,
                                              inputParameters=[{"name": "letter", "value": "o"},
                                                               {"name": "delay_sec", "value": 40}])
            wait_for(lambda: admin.job(slow_id)["status"] == "running", "the slow job to run", timeout=120)
            started = stop(up)
        apps = started & set(processes_marked(f"JOB_ID={slow_id}"))  # the job's app and its SDK's monitors run on
        assert apps and all(process_alive(pid) for pid in apps)
        left = [pid for pid in started - apps if process_alive(pid)]
        assert not left, f"processes up started and did not stop: {left}"
        assert admin.job(slow_id)["status"] == "running"

        with running_up(directory, env, "second") as up:
            assert "Work pools created: none (all there)" in up.text()
            assert {pool["name"]: pool["id"] for pool in up.read("/work_pools/filter")} == \
                {name: pool["id"] for name, pool in pools.items()}
            assert {d["name"]: d["id"] for d in up.read("/deployments/filter")} == deployments
            job = finished_job(admin, slow_id, timeout=120)
            assert job["status"] == "completed", job.get("error")
            runs = [r for r in up.read("/flow_runs/filter") if f"job:{slow_id}" in r["tags"]]
            assert len(runs) == 1
            stop(up)
        wait_for(lambda: not any(process_alive(pid) for pid in apps), "the slow job's processes to end", timeout=30)


def test_start_subscription_replaces_a_run_an_earlier_controller_left_unfinished(prefect_stack, tmp_path):
    """systemd's dendro-prefect-subscription.service runs it each time the controller's worker (re)starts."""
    with running_stand_in(tmp_path / "central") as admin:
        config = register_resource(admin, tmp_path / "resource", [{"name": "letter_count",
                                                                   "specUri": letter_count_spec_uri(tmp_path)}])
        record_secret(config.compute_resource_private_key.get_secret_value(), "compute-resource-key")
        env = dict(prefect_env(prefect_stack.home, prefect_stack.api_url))
        command = [DENDRO_PREFECT, "start-subscription", "--config",
                   str(tmp_path / "resource" / ".dendro_compute_resource.json")]

        def start() -> str:
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stderr
            return result.stdout

        def current_run() -> str | None:
            heartbeat = heartbeat_of(prefect_stack, config.compute_resource_id)
            return heartbeat and heartbeat["flow_run_id"]

        assert start().startswith("Started the subscription flow run ")
        first = wait_for(current_run, "the first subscription flow run's heartbeat", timeout=120, interval=1.0)
        try:
            said = start()
            first_name = prefect_api().read_flow_run(first).name
            assert said.splitlines()[0] == (f"Cancelled the subscription flow run {first_name} an earlier controller "
                                            "left unfinished")
            second = wait_for(lambda: (run_id := current_run()) != first and run_id, "the new run's heartbeat",
                              timeout=120, interval=1.0)
            assert prefect_api().read_flow_run(first).state.is_cancelled()
        finally:
            for run_id in {first, current_run()}:
                if not prefect_api().read_flow_run(run_id).state.is_final():
                    cancel_subscription_run(run_id)
        assert second != first
