"""Slurm dispatch: N jobs created at the central at once → all accepted by `sbatch`.

Runs the whole path on this machine: a Prefect server (PostgreSQL, or SQLite), the central stand-in, the subscription
flow, a `dendro-slurm` worker, and the one-node Slurm cluster of scripts/start-slurm.sh. The jobs are
submitted held (`#SBATCH --hold`), so that Slurm accepts them without running them, and are cancelled
at the end. Prints jobs/s and p50/p99 of job creation → `sbatch` accepted.

    .venv/bin/python bench/slurm_dispatch.py --jobs 100 --jobs 1000 [--database sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from prefect.settings import PREFECT_API_URL, temporary_settings  # noqa: E402

from dendro_prefect.bridge.routing import DEFAULT_DEPLOYMENTS  # noqa: E402
from dendro_prefect.central.process import running_central  # noqa: E402
from dendro_prefect.config import ComputeResourceConfig  # noqa: E402
from dendro_prefect.embedded import (  # noqa: E402
    postgres_database,
    prefect_cli,
    prefect_server,
    prefect_worker,
)
from dendro_prefect.protocol.signing import generate_keypair, make_resource_code  # noqa: E402

SLEEPER = REPO / "tests" / "fixtures" / "apps" / "sleeper"


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def submissions(job_root: Path, job_ids: list[str]) -> dict[str, tuple[str, float]]:
    """Job id → (its Slurm job id, when `sbatch` accepted it): the worker writes the Slurm job id
    into the job's directory as soon as `sbatch` answers. Read from the file system, so that the
    benchmark adds no load to the Prefect server it measures."""
    found = {}
    for job_id in job_ids:
        path = job_root / job_id / "slurm_job_ids"
        try:
            found[job_id] = (path.read_text().split()[0], path.stat().st_mtime)
        except (FileNotFoundError, IndexError):
            pass
    return found


def run_once(n: int, workdir: Path, database: str) -> dict:
    home = workdir / "prefect"
    with ExitStack() as stack:
        database_url = stack.enter_context(postgres_database(workdir / "postgres")) if database == "postgres" else None
        api_url = stack.enter_context(prefect_server(home, database_url=database_url))
        stack.enter_context(temporary_settings(updates={PREFECT_API_URL: api_url}))
        admin = stack.enter_context(running_central(workdir / "central"))
        resource_id, private_key = generate_keypair()
        config_file = workdir / ".dendro_compute_resource.json"
        ComputeResourceConfig(compute_resource_id=resource_id, compute_resource_private_key=private_key,
                              central_url=admin.url, container_method="none").write(config_file)
        admin.approve(resource_id, make_resource_code(private_key))
        admin.set_apps(resource_id, [{"name": "sleeper", "specUri": (SLEEPER / "spec.json").as_uri()}])
        prefect_cli(home, api_url, "work-pool", "create", "dendro-controller", "--type", "process")
        prefect_cli(home, api_url, "work-pool", "create", "bench-slurm", "--type", "dendro-slurm")
        prefect_cli(home, api_url, "deploy", "--name", "subscription", cwd=REPO)
        from prefect.client.orchestration import get_client
        from prefect.deployments import arun_deployment

        async def setup() -> None:
            async with get_client() as client:
                flow_id = await client.create_flow_from_name("dendro-job")
                await client.create_deployment(flow_id=flow_id, name="bench-slurm", work_pool_name="bench-slurm",
                                               entrypoint="flows/dendro_job.py:dendro_job",
                                               job_variables={"extra_sbatch_lines": ["--hold"]})
            await arun_deployment("dendro-subscription/subscription", timeout=0, as_subflow=False, parameters={
                "config_file": str(config_file), "poll_interval_sec": 2.0,
                "submit_concurrency": 4 if database == "postgres" else 1,
                "deployments": {**DEFAULT_DEPLOYMENTS, "slurm": "dendro-job/bench-slurm"}})

        asyncio.run(setup())
        stack.enter_context(prefect_worker(home, api_url, "dendro-controller", "process", REPO, "controller.log"))
        stack.enter_context(prefect_worker(home, api_url, "bench-slurm", "dendro-slurm", workdir, "slurm.log"))
        deadline = time.monotonic() + 120
        while admin.resource(resource_id)["spec"] is None:
            if time.monotonic() > deadline:
                raise SystemExit("the subscription flow did not start")
            time.sleep(0.2)
        project_id = admin.create_project("bench")
        spec = (SLEEPER / "spec.json").read_text()
        import json

        processor = json.loads(spec)["processors"][0]
        request = {
            "computeResourceId": resource_id, "projectId": project_id, "processorName": "sleeper",
            "inputFiles": [], "outputFiles": [], "inputParameters": [], "processorSpec": processor,
            "requiredResources": {"numCpus": 1, "numGpus": 0, "memoryGb": 0.1, "timeSec": 600},
            "runMethod": "slurm"}
        started = time.time()
        job_ids = admin.create_jobs([request] * n)
        created = time.time()
        creating = created - started
        found: dict[str, tuple[str, float]] = {}
        while len(found) < n and time.time() - started < 60 + 2 * n:
            time.sleep(0.5)
            found = submissions(workdir / "dendro-jobs", job_ids)
        elapsed = max(t for _, t in found.values()) - started if found else float("nan")
        latencies = [t - created for _, t in found.values()]
        subprocess.run(["scancel", *[slurm_id for slurm_id, _ in found.values()]], capture_output=True)
        return {"n": n, "submitted": len(found), "creating_s": creating, "all_submitted_s": elapsed,
                "jobs_per_s": len(found) / elapsed if found else 0.0,
                "p50_s": percentile(latencies, 50) if latencies else float("nan"),
                "p99_s": percentile(latencies, 99) if latencies else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, action="append", help="jobs per run (repeatable); default 100")
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres",
                        help="the Prefect server's database (PostgreSQL is Prefect's choice for volume)")
    args = parser.parse_args()
    for n in args.jobs or [100]:
        with tempfile.TemporaryDirectory(prefix="dendro-bench-") as workdir:
            result = run_once(n, Path(workdir), args.database)
        print(f"{args.database}, {result['n']:5d} jobs: {result['submitted']} submitted to Slurm in {result['all_submitted_s']:.1f} s "
              f"({result['jobs_per_s']:.1f} jobs/s; creating them took {result['creating_s']:.1f} s); "
              f"creation → sbatch accepted p50 {result['p50_s']:.2f} s, p99 {result['p99_s']:.2f} s",
              flush=True)


if __name__ == "__main__":
    main()
