"""The floor Prefect itself sets: how fast this machine's Prefect server takes one flow run per job,
with nothing of dendro-prefect in the way.

N flow runs are created from a deployment of a `dendro-local` pool, as the subscription flow creates
them (job variables, tags, idempotency key), by `--callers` concurrent callers; then each is taken
through the states a worker gives it (Pending, Running, Completed). Prints runs/s and the server's CPU
per run for creation alone and for the whole life of a run: what a job costs Prefect before any worker,
launch or log line. Compare with bench/throughput.py, which runs the whole path.

    .venv/bin/python bench/prefect_floor.py [--runs 300] [--callers 8] [--database postgres|sqlite] [--server-workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from common import REPO, add_server_options, bench_workdir, prefect_server_cpu_sec, server_setup
from prefect.client.orchestration import get_client
from prefect.states import Completed, Pending, Running

from dendro_prefect.embedded import Deployment, running_prefect

JOB_VARIABLES = {"app_name": "noop", "app_executable": str(REPO / "tests/fixtures/apps/noop/main.sh"),
                 "num_cpus": 1, "memory_gb": 0.1, "time_limit_sec": 600}


async def take_runs(deployment_id, batch: str, runs: int, callers: int, lifecycle: bool) -> None:
    async with get_client() as client:
        slots = asyncio.Semaphore(callers)

        async def one(index: int) -> None:
            job_id = f"{batch}-{index}"
            async with slots:
                flow_run = await client.create_flow_run_from_deployment(
                    deployment_id, parameters={"job_id": job_id}, job_variables=JOB_VARIABLES,
                    tags=["app:noop", "processor:noop", f"job:{job_id}"], idempotency_key=job_id)
                for state in (Pending(), Running(), Completed()) if lifecycle else ():
                    await client.set_flow_run_state(flow_run.id, state)

        await asyncio.gather(*(one(index) for index in range(runs)))


def measure(deployment_id, what: str, runs: int, callers: int) -> float:
    """Runs/s for `what` (creation, or a run's whole life), printed with the server's CPU per run."""
    cpu_before, started = prefect_server_cpu_sec(), time.monotonic()
    asyncio.run(take_runs(deployment_id, what, runs, callers, lifecycle=what == "lifecycle"))
    elapsed = time.monotonic() - started
    per_run_ms = 1000 * (prefect_server_cpu_sec() - cpu_before) / runs
    print(f"{what:9s}: {runs} runs in {elapsed:.1f} s ({runs / elapsed:.1f} runs/s), server CPU {per_run_ms:.0f} ms "
          f"per run; 1,000 such runs take at least {1000 / (runs / elapsed):.0f} s here", flush=True)
    return runs / elapsed


def floor(prefect, runs: int, callers: int) -> dict[str, float]:
    """Prefect's floor on the server of `prefect` (a deployment of a pool of its own, no worker): runs/s for
    creation alone and for a run's whole life."""
    [name] = prefect.deploy(Deployment(f"floor-{time.monotonic_ns()}"))

    async def deployment():
        async with get_client() as client:
            return (await client.read_deployment_by_name(name)).id

    deployment_id = asyncio.run(deployment())
    return {what: measure(deployment_id, what, runs, callers) for what in ("creation", "lifecycle")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--callers", type=int, default=8, help="concurrent API callers")
    add_server_options(parser)
    parser.add_argument("--workdir", type=Path, help="keep the server's files in DIR/prefect_floor")
    args = parser.parse_args()
    with bench_workdir(args.workdir, "prefect_floor") as workdir, running_prefect(
            workdir / "prefect", database=args.database, api_processes=args.server_workers, project=False, controller=False) as prefect:
        print(f"Prefect server on {server_setup(args)}, {args.callers} callers:", flush=True)
        figures = floor(prefect, args.runs, args.callers)
    print(json.dumps({"bench": "prefect_floor", "database": args.database, "server_workers": args.server_workers, "runs": args.runs, "callers": args.callers,
                      **{f"{what}_runs_per_sec": round(value, 2) for what, value in figures.items()}}))


if __name__ == "__main__":
    main()
