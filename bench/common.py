"""The stack every benchmark runs on: a Prefect server (PostgreSQL or SQLite), the central stand-in, a
registered compute resource, its subscription flow and one pool's worker, all on this machine and
stopped (by PID) when the benchmark ends."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from prefect.settings import PREFECT_API_URL, temporary_settings  # noqa: E402

from dendro_prefect.bridge.routing import DEFAULT_DEPLOYMENTS  # noqa: E402
from dendro_prefect.central.admin_client import CentralAdmin  # noqa: E402
from dendro_prefect.central.process import running_central  # noqa: E402
from dendro_prefect.config import ComputeResourceConfig  # noqa: E402
from dendro_prefect.embedded import postgres_database, prefect_cli, prefect_server, prefect_worker  # noqa: E402
from dendro_prefect.protocol.signing import generate_keypair, make_resource_code  # noqa: E402

APPS = REPO / "tests" / "fixtures" / "apps"


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def rss_mb(pid: int) -> float:
    """A process's resident memory (VmRSS) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for process {pid}")


def cpu_sec(pid: int) -> float:
    """The CPU time (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int, command_contains: str = "") -> list[int]:
    """The processes whose parent is `pid` (and whose command line contains `command_contains`)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            command = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid) and command_contains in command:
            found.append(int(status.parent.name))
    return found


def prefect_server_pid() -> int:
    """The Prefect server this process started (embedded.prefect_server)."""
    [pid] = children(os.getpid(), "server start")
    return pid


@contextmanager
def bench_workdir(kept: Path | None, name: str) -> Iterator[Path]:
    """Where a stack keeps its files: a temporary directory, or `kept/name`, kept after the run (a name
    of its own per run: a stand-in or Prefect server started on an earlier run's files finds its
    resources, jobs and pools there)."""
    if kept is None:
        with tempfile.TemporaryDirectory(prefix="dendro-bench-") as workdir:
            yield Path(workdir)
    else:
        workdir = kept.resolve() / name
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir


@dataclass
class BenchStack:
    admin: CentralAdmin
    resource_id: str
    workdir: Path
    run_method: str
    app: str
    controller_worker_pid: int  # the process worker that runs the subscription flow in a child process
    pool_worker_pid: int

    def job_requests(self, count: int, parameters: list[dict] | None = None, memory_gb: float = 0.1) -> list[dict]:
        """`count` jobs of the app's first processor, no inputs or outputs."""
        processor = json.loads((APPS / self.app / "spec.json").read_text())["processors"][0]
        request = {
            "computeResourceId": self.resource_id,
            "processorName": processor["name"], "inputFiles": [], "outputFiles": [],
            "inputParameters": parameters or [], "processorSpec": processor,
            "requiredResources": {"numCpus": 1, "numGpus": 0, "memoryGb": memory_gb, "timeSec": 600},
            "runMethod": self.run_method}
        return [dict(request, projectId=project_id) for project_id in self.admin.projects_for("bench", count)]


async def _cancel(flow_run_id) -> None:
    """Cancel a flow run and wait (up to a minute) for it to end."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    async with get_client() as client:
        await client.set_flow_run_state(flow_run_id, Cancelling(), force=True)
        deadline = time.monotonic() + 60
        while not (await client.read_flow_run(flow_run_id)).state.is_final() and time.monotonic() < deadline:
            await asyncio.sleep(0.5)


@contextmanager
def bench_stack(workdir: Path, *, database: str, run_method: str, worker_type: str, app: str,
                job_variables: dict | None = None, worker_env: dict | None = None, poll_interval_sec: float = 2.0,
                submit_concurrency: int = 1, spec_uri: str | None = None,
                container_method: str = "none") -> Iterator[BenchStack]:
    """Everything up, and the subscription flow reporting the app's spec, before it yields. The app is
    a test fixture's (tests/fixtures/apps/<app>) unless `spec_uri` names another."""
    home = workdir / "prefect"
    pool = f"bench-{run_method}"
    with ExitStack() as stack:
        database_url = stack.enter_context(postgres_database(workdir / "postgres")) if database == "postgres" else None
        api_url = stack.enter_context(prefect_server(home, database_url=database_url))
        stack.enter_context(temporary_settings(updates={PREFECT_API_URL: api_url}))
        admin = stack.enter_context(running_central(workdir / "central"))
        resource_id, private_key = generate_keypair()
        config_file = workdir / ".dendro_compute_resource.json"
        ComputeResourceConfig(compute_resource_id=resource_id, compute_resource_private_key=private_key,
                              central_url=admin.url, container_method=container_method,
                              pubsub_origin=admin.pubsub_origin).write(config_file)
        admin.approve(resource_id, make_resource_code(private_key))
        admin.set_apps(resource_id, [{"name": app, "specUri": spec_uri or (APPS / app / "spec.json").as_uri()}])
        prefect_cli(home, api_url, "work-pool", "create", "dendro-controller", "--type", "process")
        prefect_cli(home, api_url, "work-pool", "create", pool, "--type", worker_type)
        prefect_cli(home, api_url, "deploy", "--name", "subscription", cwd=REPO)
        from prefect.client.orchestration import get_client
        from prefect.deployments import arun_deployment

        async def setup():
            async with get_client() as client:
                flow_id = await client.create_flow_from_name("dendro-job")
                await client.create_deployment(flow_id=flow_id, name=pool, work_pool_name=pool,
                                               entrypoint="flows/dendro_job.py:dendro_job",
                                               job_variables=job_variables or {})
            return await arun_deployment("dendro-subscription/subscription", timeout=0, as_subflow=False, parameters={
                "config_file": str(config_file), "poll_interval_sec": poll_interval_sec,
                "submit_concurrency": submit_concurrency,
                "deployments": {**DEFAULT_DEPLOYMENTS, run_method: f"dendro-job/{pool}"}})

        subscription = asyncio.run(setup())
        controller_worker = stack.enter_context(
            prefect_worker(home, api_url, "dendro-controller", "process", REPO, "controller.log"))
        # Stopping a process worker leaves its flow's process running: the subscription flow run is cancelled
        # (and stops within seconds) before its worker stops.
        stack.callback(lambda: asyncio.run(_cancel(subscription.id)))
        pool_worker = stack.enter_context(
            prefect_worker(home, api_url, pool, worker_type, workdir, f"{pool}.log", worker_env))
        deadline = time.monotonic() + 120
        while admin.resource(resource_id)["spec"] is None:
            if time.monotonic() > deadline:
                raise SystemExit("the subscription flow did not start")
            time.sleep(0.2)
        yield BenchStack(admin, resource_id, workdir, run_method, app, controller_worker.pid, pool_worker.pid)
