"""Intake latency on the local pool: a job created at the central → `starting` (its app launched) and
→ `running` (the app says so), p50/p99, with PubSub and with PubSub down (polling only).

The whole path runs on this machine (bench/common.py): the subscription flow and a `dendro-local`
worker. The app is the no-op app by default (tests/fixtures/apps/noop: it reports `running` and
`completed` with curl), so that what is measured is the controller's path and not a machine busy with
earlier jobs' SDK processes (each real-SDK job costs 2-3 s of CPU: at one job a second a 2-core
machine saturates); `--app count_starts` runs the real dendro SDK instead. Jobs are created one every
`--gap-sec` (1 s: each is measured on its own rather than behind a queue; 0.2 s: 5 arrivals a second); the
times are the central's own timestamps. `--preload N` first fills the Prefect server with N finished jobs'
flow runs (Completed, tagged and named as the controller does, ten log lines each; made through the same
bulk endpoint, without running them), to show that a server at rest with a history does not slow intake.
The last line is the figures as JSON.

    .venv/bin/python bench/intake_latency.py [--jobs 100] [--gap-sec 1|0.2] [--poll-sec 5] [--preload 10000]
        [--database postgres|sqlite] [--server-workers 2] [--app noop|count_starts] [--pubsub up|down] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from common import (
    SDK_BIN,
    add_server_options,
    bench_stack,
    bench_workdir,
    create_one_every,
    ended_jobs,
    percentile,
    server_setup,
)
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentFlowRunCreate, LogCreate
from prefect.states import Completed, to_state_create
from prefect.types._datetime import now

from dendro_prefect.controller.rounds import BULK_CREATE_LIMIT, create_flow_runs_in_bulk
from dendro_prefect.controller.routing import job_tag, resource_tag

LOG_LINES_PER_RUN = 10


async def preload_finished_runs(stack, count: int, callers: int = 4) -> None:
    """`count` Completed flow runs of finished jobs on the stack's deployment, BULK_CREATE_LIMIT per call,
    `callers` calls at a time."""
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(f"dendro-job/bench-{stack.run_method}")
        slots = asyncio.Semaphore(callers)

        async def create(start: int) -> None:
            async with slots:
                await _create_finished(client, stack, deployment.id, start, min(start + BULK_CREATE_LIMIT, count))

        await asyncio.gather(*(create(start) for start in range(0, count, BULK_CREATE_LIMIT)))


async def _create_finished(client, stack, deployment_id, start: int, end: int) -> None:
    """Jobs `start` to `end` (exclusive): their runs, then their log lines."""
    job_ids = [f"preloaded{index:06d}" for index in range(start, end)]
    results = await create_flow_runs_in_bulk(client, deployment_id, [DeploymentFlowRunCreate(
        parameters={"job_id": job_id}, name=f"{stack.app}/{stack.app} {job_id}", idempotency_key=job_id,
        tags=[f"app:{stack.app}", f"processor:{stack.app}", "project:preloaded", f"run-method:{stack.run_method}",
              job_tag(job_id), resource_tag(stack.resource_id)],
        state=to_state_create(Completed()),
    ) for job_id in job_ids])
    run_ids = [result.flow_run_id for result in results]
    await client.create_logs([LogCreate(name="prefect.flow_runs.worker", level=20, flow_run_id=run_id,
                                        message=f"line {line} of a finished job", timestamp=now("UTC"))
                              for run_id in run_ids for line in range(LOG_LINES_PER_RUN)])


def measure(stack, jobs: int, gap_sec: float, deadline_sec: float) -> dict[str, list[float]]:
    no_sleep = [{"name": "min_sec", "value": 0}, {"name": "max_sec", "value": 0}]
    requests = stack.job_requests(jobs, no_sleep if stack.app == "count_starts" else [])
    documents = ended_jobs(stack.admin, create_one_every(stack.admin, requests, gap_sec), deadline_sec)
    failed = [d["jobId"] for d in documents if d["status"] != "completed"]
    if failed:
        raise SystemExit(f"{len(failed)} jobs did not complete within {deadline_sec:g} s of the last creation, "
                         f"e.g. {stack.admin.job(failed[0])}")
    return {"starting": [d["timestampStarting"] - d["timestampCreated"] for d in documents],
            "running": [d["timestampStarted"] - d["timestampCreated"] for d in documents]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--gap-sec", type=float, default=1.0, help="between two job creations")
    parser.add_argument("--poll-sec", type=float, default=5.0, help="the subscription flow's poll interval")
    add_server_options(parser)
    parser.add_argument("--preload", type=int, default=0, help="finished jobs' flow runs in Prefect before the jobs")
    parser.add_argument("--app", choices=["noop", "count_starts"], default="noop")
    parser.add_argument("--pubsub", choices=["up", "down"], action="append",
                        help="measure with PubSub up, down (polling only), or both (the default)")
    parser.add_argument("--deadline-sec", type=float, default=600.0,
                        help="how long after the last creation every job must have ended")
    parser.add_argument("--workdir", type=Path, help="keep the stack's files (logs, databases) here, one directory "
                        "per PubSub mode; a temporary directory by default")
    parser.add_argument("--sdk-bin", default=str(SDK_BIN),
                        help="the bin directory of a virtual environment with the dendro SDK (scripts/test.sh makes it)")
    args = parser.parse_args()
    results = []
    for pubsub in args.pubsub or ["up", "down"]:
        with bench_workdir(args.workdir, pubsub) as workdir:
            with bench_stack(workdir, database=args.database, server_workers=args.server_workers, run_method="local",
                             worker_type="dendro-local", app=args.app, poll_interval_sec=args.poll_sec,
                             sdk_bin=Path(args.sdk_bin)) as stack:
                if args.preload:
                    started = time.monotonic()
                    asyncio.run(preload_finished_runs(stack, args.preload))
                    print(f"{args.preload} finished jobs' flow runs preloaded in {time.monotonic() - started:.0f} s",
                          flush=True)
                stack.admin.set_pubsub(pubsub)
                latencies = measure(stack, args.jobs, args.gap_sec, args.deadline_sec)
        figures = ", ".join(f"→ {phase} p50 {percentile(values, 50):.2f} s, p99 {percentile(values, 99):.2f} s"
                            for phase, values in latencies.items())
        print(f"{server_setup(args)}{f', {args.preload} runs preloaded' if args.preload else ''}, {args.app} app, PubSub {pubsub} (poll every {args.poll_sec:g} s), {args.jobs} jobs one every "
              f"{args.gap_sec:g} s: created {figures}", flush=True)
        results.append({"pubsub": pubsub, **{f"{phase}_{q}_sec": round(percentile(values, n), 3)
                                             for phase, values in latencies.items() for q, n in (("p50", 50), ("p99", 99))}})
    print(json.dumps({"bench": "intake_latency", "database": args.database, "server_workers": args.server_workers,
                      "preload": args.preload, "app": args.app, "jobs": args.jobs,
                      "gap_sec": args.gap_sec, "poll_sec": args.poll_sec, "results": results}))


if __name__ == "__main__":
    main()
