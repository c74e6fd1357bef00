"""Intake latency on the local pool: a job created at the central → `starting` (its app launched) and
→ `running` (the app says so), p50/p99, with PubSub and with PubSub down (polling only).

The whole path runs on this machine (bench/common.py): the subscription flow and a `dendro-local`
worker. The app is the no-op app by default (tests/fixtures/apps/noop: it reports `running` and
`completed` with curl), so that what is measured is the controller's path and not a machine busy with
earlier jobs' SDK processes (each real-SDK job costs 2-3 s of CPU: at one job a second a 2-core
machine saturates); `--app count_starts` runs the real dendro SDK instead. Jobs are created one every
`--gap-sec` (1 s: each is measured on its own rather than behind a queue; 0.2 s: 5 arrivals a second); the
times are the central's own timestamps. The last line is the figures as JSON.

    .venv/bin/python bench/intake_latency.py [--jobs 100] [--poll-sec 5] [--database postgres|sqlite]
        [--app noop|count_starts] [--pubsub up|down] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import DATABASES, SDK_BIN, bench_stack, bench_workdir, create_one_every, ended_jobs, percentile


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
    parser.add_argument("--database", choices=DATABASES, default="postgres")
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
            with bench_stack(workdir, database=args.database, run_method="local", worker_type="dendro-local",
                             app=args.app, poll_interval_sec=args.poll_sec,
                             sdk_bin=Path(args.sdk_bin)) as stack:
                stack.admin.set_pubsub(pubsub)
                latencies = measure(stack, args.jobs, args.gap_sec, args.deadline_sec)
        figures = ", ".join(f"→ {phase} p50 {percentile(values, 50):.2f} s, p99 {percentile(values, 99):.2f} s"
                            for phase, values in latencies.items())
        print(f"{args.database}, {args.app} app, PubSub {pubsub} (poll every {args.poll_sec:g} s), {args.jobs} jobs one every "
              f"{args.gap_sec:g} s: created {figures}", flush=True)
        results.append({"pubsub": pubsub, **{f"{phase}_{q}_sec": round(percentile(values, n), 3)
                                             for phase, values in latencies.items() for q, n in (("p50", 50), ("p99", 99))}})
    print(json.dumps({"bench": "intake_latency", "database": args.database, "app": args.app, "jobs": args.jobs,
                      "gap_sec": args.gap_sec, "poll_sec": args.poll_sec, "results": results}))


if __name__ == "__main__":
    main()
