"""Slurm dispatch: N jobs created at the central at once → all accepted by `sbatch`.

Runs the whole path on this machine: a Prefect server (SQLite), the central stand-in, the subscription
flow, a `dendro-slurm` worker, and the one-node Slurm cluster of scripts/start-slurm.sh. The jobs are
submitted held (`#SBATCH --hold`), so that Slurm accepts them without running them, and are cancelled
at the end. Prints jobs/s and p50/p99 of job creation → `sbatch` accepted (the flow run's recorded
Slurm job id).

    .venv/bin/python bench/slurm_dispatch.py --jobs 100 --jobs 1000 [--database sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

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


async def slurm_ids_by_job(job_ids: set[str]) -> dict[str, tuple[str, float, float]]:
    """Job id → (Slurm job id, when its flow run was created, when it went Running: just after sbatch
    accepted the job)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    found: dict[str, tuple[str, float, float]] = {}
    async with get_client() as client:
        offset = 0
        while True:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["app:sleeper"])), limit=200, offset=offset)
            for run in runs:
                job_id = run.parameters.get("job_id")
                if job_id in job_ids and run.start_time and (run.infrastructure_pid or "").startswith("slurm:"):
                    found[job_id] = (run.infrastructure_pid.split(":", 1)[1], run.created.timestamp(),
                                     run.start_time.timestamp())
            if len(runs) < 200:
                return found
            offset += 200


def run_once(n: int, workdir: Path, database: str) -> dict:
    home = workdir / "prefect"
    with ExitStack() as stack:
        database_url = stack.enter_context(postgres_database(workdir / "postgres")) if database == "postgres" else None
        api_url = stack.enter_context(prefect_server(home, database_url=database_url))
        os.environ["PREFECT_API_URL"] = api_url
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
        created: dict[str, float] = {}
        started = time.time()
        for _ in range(n):
            job_id = admin.create_job({
                "computeResourceId": resource_id, "projectId": project_id, "processorName": "sleeper",
                "inputFiles": [], "outputFiles": [], "inputParameters": [], "processorSpec": processor,
                "requiredResources": {"numCpus": 1, "numGpus": 0, "memoryGb": 0.1, "timeSec": 600},
                "runMethod": "slurm"})
            created[job_id] = time.time()
        creating = time.time() - started
        found: dict[str, tuple[str, float, float]] = {}
        while len(found) < n:
            if time.time() - started > 60 + n:
                break
            time.sleep(1.0)
            found = asyncio.run(slurm_ids_by_job(set(created)))
        elapsed = max(t for _, _, t in found.values()) - started if found else float("nan")
        latencies = [found[j][2] - created[j] for j in found]
        intake = [found[j][1] - created[j] for j in found]
        subprocess.run(["scancel", *[slurm_id for slurm_id, _, _ in found.values()]], capture_output=True)
        return {"n": n, "submitted": len(found), "creating_s": creating, "all_submitted_s": elapsed,
                "jobs_per_s": len(found) / elapsed if found else 0.0,
                "p50_s": percentile(latencies, 50) if latencies else float("nan"),
                "p99_s": percentile(latencies, 99) if latencies else float("nan"),
                "intake_p50_s": percentile(intake, 50) if intake else float("nan"),
                "intake_p99_s": percentile(intake, 99) if intake else float("nan")}


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
              f"creation → sbatch accepted p50 {result['p50_s']:.2f} s, p99 {result['p99_s']:.2f} s "
              f"(of which creation → flow run p50 {result['intake_p50_s']:.2f} s, p99 {result['intake_p99_s']:.2f} s)",
              flush=True)


if __name__ == "__main__":
    main()
