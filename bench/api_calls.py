"""Prefect API calls per job, by component and endpoint: the count that fewer server calls per job starts from.

Every Prefect process of the stack (bench/common.py) logs its HTTP requests: httpx's INFO lines, with the root
logger at INFO (PREFECT_LOGGING_ROOT_LEVEL). The controller's log holds the `dendro-controller` process worker and
the subscription flow it runs; the pool's log holds the `dendro-local` worker. First the stack idles for
`--idle-sec` (polls, heartbeats, queries: calls whatever the load); then `--jobs` no-op jobs are created one every
`--gap-sec` (each on its own, not behind a queue) and followed to their end. A job's calls are the calls of that
window less the idle rate over it, divided by the jobs.

    .venv/bin/python bench/api_calls.py [--jobs 20] [--gap-sec 2] [--idle-sec 30] [--database postgres|sqlite] [--server-workers 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import time
from collections import Counter
from pathlib import Path

from common import FINAL, add_server_options, bench_stack, bench_workdir, create_one_every, ended_jobs

REQUEST = re.compile(r'HTTP Request: (\w+) https?://[^/]+/api(/\S*?)(?:\?\S*)? "HTTP/[\d.]+ (\d+)')
ID = re.compile(r"/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class Calls:
    """The requests a log file gains from one mark to the next, as `METHOD /path/{id}` counts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def since_mark(self) -> Counter:
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            text = log.read().decode(errors="replace")
        self.offset += len(text.encode())
        return Counter(f"{m[1]} {ID.sub('/{id}', m[2])}" for m in REQUEST.finditer(text))


def run_jobs(stack, jobs: int, gap_sec: float, deadline_sec: float) -> None:
    job_ids = create_one_every(stack.admin, stack.job_requests(jobs), gap_sec)
    if any(d["status"] not in FINAL for d in ended_jobs(stack.admin, job_ids, deadline_sec)):
        raise SystemExit(f"the jobs did not all end within {deadline_sec:g} s of the last creation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--gap-sec", type=float, default=2.0, help="between two job creations")
    parser.add_argument("--idle-sec", type=float, default=30.0, help="how long the idle stack is counted")
    parser.add_argument("--poll-sec", type=float, default=10.0, help="the subscription flow's poll interval")
    add_server_options(parser)
    parser.add_argument("--workdir", type=Path, help="keep the stack's files (logs, databases) here")
    args = parser.parse_args()
    os.environ["PREFECT_LOGGING_ROOT_LEVEL"] = "INFO"  # for every Prefect process of the stack: httpx's lines
    logging.getLogger("httpx").setLevel(logging.WARNING)  # but not this one's
    with bench_workdir(args.workdir, "api-calls") as workdir:
        with bench_stack(workdir, database=args.database, server_workers=args.server_workers, run_method="local", worker_type="dendro-local",
                         app="noop", poll_interval_sec=args.poll_sec) as stack:
            logs = {"controller": Calls(workdir / "prefect" / "controller.log"),
                    "worker": Calls(workdir / "prefect" / "bench-local.log")}
            time.sleep(args.idle_sec)
            idle = {name: calls.since_mark() for name, calls in logs.items()}
            started = time.monotonic()
            run_jobs(stack, args.jobs, args.gap_sec, deadline_sec=300.0)
            window = time.monotonic() - started
            busy = {name: calls.since_mark() for name, calls in logs.items()}
    per_job: dict[str, dict[str, float]] = {}
    for name in logs:
        scale = window / args.idle_sec
        endpoints = set(busy[name]) | set(idle[name])
        counts = {e: (busy[name][e] - idle[name][e] * scale) / args.jobs for e in endpoints}
        per_job[name] = {e: round(n, 2) for e, n in sorted(counts.items(), key=lambda item: -item[1])
                         if abs(n) >= 0.05}
    for name, endpoints in per_job.items():
        print(f"{name}: {sum(endpoints.values()):.1f} calls per job beyond its idle "
              f"{sum(idle[name].values()) * 60 / args.idle_sec:.0f} per minute")
        for endpoint, count in endpoints.items():
            print(f"  {count:6.2f}  {endpoint}")
    print(json.dumps({"bench": "api_calls", "database": args.database, "server_workers": args.server_workers, "jobs": args.jobs, "gap_sec": args.gap_sec,
                      "calls_per_job": {name: round(sum(e.values()), 1) for name, e in per_job.items()},
                      "idle_calls_per_min": {name: round(sum(c.values()) * 60 / args.idle_sec, 1)
                                             for name, c in idle.items()},
                      "per_job_by_endpoint": per_job}))


if __name__ == "__main__":
    main()
