"""What the job variables of each work pool cost the Prefect server when a flow run is created: Prefect
validates a run's job variables against its pool's base job template (the template's schema, each
variable's default, then the whole), per run, in the creating call.

For each pool type of ours, `--runs` flow runs are created in bulk (as the subscription flow creates them,
BULK_CREATE_LIMIT a call) on a deployment of a pool with that type's base job template (deployments/*.json),
with the job variables the controller gives a job; and on a pool whose template declares no variables
(`bare`), without job variables: the difference is the validation. Prints the server's CPU per run and
runs/s per pool; the last line is the figures as JSON.

    .venv/bin/python bench/job_variables.py [--runs 300] [--database postgres|sqlite] [--server-workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from common import REPO, add_server_options, bench_workdir, prefect_server_cpu_sec, server_setup
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentFlowRunCreate, WorkPoolUpdate
from prefect.states import Scheduled, to_state_create

from dendro_prefect.controller.rounds import BULK_CREATE_LIMIT, create_flow_runs_in_bulk
from dendro_prefect.embedded import Deployment, running_prefect

POOL_TYPES = {"local": "dendro-local", "slurm": "dendro-slurm", "aws-batch": "dendro-aws-batch",
              "kubernetes": "dendro-kubernetes", "bare": "dendro-local"}
# The job variables routing.plan_flow_run gives a job of the no-op app.
JOB_VARIABLES = {"app_name": "noop", "app_image": None, "app_executable": str(REPO / "tests/fixtures/apps/noop/main.sh"),
                 "num_cpus": 1, "num_gpus": 0, "memory_gb": 0.1, "time_limit_sec": 600}
BARE_TEMPLATE = {"job_configuration": {"name": "bare"}, "variables": {"type": "object", "properties": {}}}


async def create_runs(deployment_name: str, runs: int, job_variables: dict) -> None:
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(deployment_name)
        for start in range(0, runs, BULK_CREATE_LIMIT):
            results = await create_flow_runs_in_bulk(client, deployment.id, [DeploymentFlowRunCreate(
                parameters={"job_id": f"{deployment.name}-{index}"}, job_variables=job_variables,
                idempotency_key=f"{deployment.name}-{index}", state=to_state_create(Scheduled()),
            ) for index in range(start, min(start + BULK_CREATE_LIMIT, runs))])
            refused = [result for result in results if result.status != "CREATED"]
            if refused:
                raise SystemExit(f"Prefect refused runs of {deployment_name}: {refused[0]}")


async def strip_template(pool: str) -> None:
    async with get_client() as client:
        await client.update_work_pool(pool, WorkPoolUpdate(base_job_template=BARE_TEMPLATE))


def measure(prefect, pool: str, runs: int) -> dict:
    [name] = prefect.deploy(Deployment(f"jv-{pool}", POOL_TYPES[pool]))
    if pool == "bare":
        asyncio.run(strip_template(f"jv-{pool}"))
    cpu_before, started = prefect_server_cpu_sec(), time.monotonic()
    asyncio.run(create_runs(name, runs, {} if pool == "bare" else JOB_VARIABLES))
    elapsed = time.monotonic() - started
    figures = {"pool": pool, "server_cpu_ms_per_run": round(1000 * (prefect_server_cpu_sec() - cpu_before) / runs, 1),
               "runs_per_sec": round(runs / elapsed, 1)}
    print(f"{pool:10s}: server CPU {figures['server_cpu_ms_per_run']:5.1f} ms per run created, "
          f"{figures['runs_per_sec']:.0f} runs/s", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300, help="flow runs created per pool")
    add_server_options(parser)
    parser.add_argument("--workdir", type=Path, help="keep the server's files in DIR/job_variables")
    args = parser.parse_args()
    with bench_workdir(args.workdir, "job_variables") as workdir, running_prefect(
            workdir / "prefect", database=args.database, api_processes=args.server_workers, project=False,
            controller=False) as prefect:
        print(f"Prefect server on {server_setup(args)}, {args.runs} runs per pool:", flush=True)
        results = [measure(prefect, pool, args.runs) for pool in POOL_TYPES]
    print(json.dumps({"bench": "job_variables", "database": args.database, "server_workers": args.server_workers,
                      "runs": args.runs, "results": results}))


if __name__ == "__main__":
    main()
