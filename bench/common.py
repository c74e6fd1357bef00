"""The stack every benchmark runs on, brought up by dendro_prefect's embedded stack: a Prefect server
(PostgreSQL or SQLite), the central stand-in, a registered compute resource, its subscription flow and one
pool's worker, all on this machine and stopped (by PID) when the benchmark ends."""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dendro_prefect.embedded import Deployment, Prefect, running_prefect  # noqa: E402
from dendro_prefect.embedded_controller import running_controller  # noqa: E402
from dendro_prefect.prefect_database import DATABASES  # noqa: E402
from dendro_prefect.stand_in.admin_client import StandInAdmin  # noqa: E402

APPS = REPO / "tests" / "fixtures" / "apps"
SDK_BIN = REPO / ".venv-sdk" / "bin"  # the dendro SDK that apps without an image run under (scripts/test.sh makes it)


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


def descendants(pid: int) -> list[int]:
    found = children(pid)
    return found + [grandchild for child in found for grandchild in descendants(child)]


def prefect_server_cpu_sec() -> float:
    """The CPU time the Prefect server this process started has used (embedded.prefect_server): its process
    and its children (the API processes of the scale-out server) and, on the scale-out server, the services'
    process. PostgreSQL and Redis are not counted."""
    roots = children(os.getpid(), "server start") + children(os.getpid(), "services start")
    if not roots:
        raise SystemExit("no Prefect server started by this process")
    return sum(cpu_sec(pid) for root in roots for pid in [root, *descendants(root)])


def add_server_options(parser) -> None:
    """The Prefect server a bench runs on: its database, and its API processes (more than one: Prefect's
    scale-out server, with Redis)."""
    parser.add_argument("--database", choices=DATABASES, default="postgres",
                        help="the Prefect server's database (PostgreSQL, the default, is Prefect's choice for volume)")
    parser.add_argument("--server-workers", type=int, default=1,
                        help="the Prefect server's API processes; more than one needs PostgreSQL and Redis")


def server_setup(args) -> str:
    """The Prefect server of a bench's arguments, in words."""
    return args.database + (f", {args.server_workers} API processes" if args.server_workers > 1 else "")


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


FINAL = ("completed", "failed")


def create_one_every(admin: StandInAdmin, requests: list[dict], gap_sec: float) -> list[str]:
    """The jobs created one at a time, `gap_sec` apart (each measured on its own, not behind a queue); their ids."""
    job_ids = []
    for request in requests:
        job_ids += admin.create_jobs([request])
        time.sleep(gap_sec)
    return job_ids


def ended_jobs(admin: StandInAdmin, job_ids: list[str], deadline_sec: float) -> list[dict]:
    """The jobs' documents once every one is final at the central, or as they stand after `deadline_sec`."""
    deadline = time.monotonic() + deadline_sec
    while True:
        documents = [admin.job(job_id) for job_id in job_ids]
        if all(d["status"] in FINAL for d in documents) or time.monotonic() > deadline:
            return documents
        time.sleep(0.5)


@dataclass
class BenchStack:
    prefect: Prefect
    admin: StandInAdmin
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


@contextmanager
def bench_stack(workdir: Path, *, database: str, server_workers: int = 1, run_method: str, worker_type: str, app: str,
                job_variables: dict | None = None, worker_env: dict | None = None, poll_interval_sec: float = 2.0,
                spec_uri: str | None = None, container_method: str = "none",
                sdk_bin: Path = SDK_BIN) -> Iterator[BenchStack]:
    """Everything up, and the subscription flow reporting the app's spec, before it yields. The app is
    a test fixture's (tests/fixtures/apps/<app>) unless `spec_uri` names another, run under the dendro SDK of
    `sdk_bin` when it has no image. Its jobs of `run_method` go to a pool of its own, `bench-<run_method>`,
    with `job_variables`."""
    pool = Deployment(f"bench-{run_method}", worker_type, job_variables)
    with running_prefect(workdir / "prefect", database=database, api_processes=server_workers) as prefect:
        apps = [{"name": app, "specUri": spec_uri or (APPS / app / "spec.json").as_uri()}]
        with running_controller(prefect, workdir, apps, pool=pool, run_method=run_method,
                                container_method=container_method, worker_env=worker_env, sdk_bin=sdk_bin,
                                poll_interval_sec=poll_interval_sec) as running:
            yield BenchStack(prefect, running.admin, running.resource_id, workdir, run_method, app,
                             running.controller_worker.pid, running.processes[0].pid)
