"""Throughput and controller memory: N jobs created at the central at once → all launched (`starting`)
and all completed, on the local pool with the no-op app (tests/fixtures/apps/noop: it speaks the job
side of the protocol with curl, so the figures are the controller's, not the dendro SDK's start-up).

Prints jobs/s, p50/p99 of creation → `starting`, the CPU each job cost the subscription flow, the worker
and the Prefect server (PostgreSQL's own processes not counted), and the resident memory (RSS) of the
subscription flow's process and of the pool's worker before the jobs and after each batch. Then, on the
same server, Prefect's floor (bench/prefect_floor.py: a flow run's whole life with nothing of ours, 8
callers) and the ratio of our launches/s to it; the last line is the figures as JSON.

    .venv/bin/python bench/throughput.py [--jobs 1000] [--batches 1] [--database postgres|sqlite] [--server-workers 2]
        [--floor-runs 300] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import (
    add_server_options,
    bench_stack,
    bench_workdir,
    children,
    cpu_sec,
    percentile,
    prefect_server_cpu_sec,
    rss_mb,
    server_setup,
)
from prefect_floor import floor


def processes(stack) -> dict[str, int]:
    """Our processes whose memory and CPU are reported, by what they are."""
    flow_processes = children(stack.controller_worker_pid)
    if len(flow_processes) != 1:
        raise SystemExit(f"expected the subscription flow's one process, found {flow_processes}")
    return {"subscription flow": flow_processes[0], "worker": stack.pool_worker_pid}


def cpu(stack) -> dict[str, float]:
    return {**{name: cpu_sec(pid) for name, pid in processes(stack).items()}, "Prefect server": prefect_server_cpu_sec()}


def memory(stack) -> dict[str, float]:
    return {name: rss_mb(pid) for name, pid in processes(stack).items()}


def run_batch(stack, jobs: int, setup: str, deadline_sec: float) -> dict:
    requests = stack.job_requests(jobs)
    cpu_before = cpu(stack)
    started = time.time()
    wanted = set(stack.admin.create_jobs(requests))
    created = time.time()
    deadline = time.monotonic() + deadline_sec
    while True:
        documents = [d for d in stack.admin.jobs(stack.resource_id) if d["jobId"] in wanted]
        if all(d["status"] in ("completed", "failed") for d in documents) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    launched = [d["timestampStarting"] for d in documents if d.get("timestampStarting")]
    finished = [d["timestampFinished"] for d in documents if d.get("timestampFinished")]
    completed = sum(d["status"] == "completed" for d in documents)
    latencies = [t - d["timestampCreated"] for d in documents if (t := d.get("timestampStarting"))]
    print(f"{setup}, {jobs} jobs created at once in {created - started:.1f} s: {len(launched)} launched in "
          f"{max(launched) - started:.1f} s ({len(launched) / (max(launched) - started):.1f} jobs/s), "
          f"{completed} completed in {max(finished) - started:.1f} s; creation → starting "
          f"p50 {percentile(latencies, 50):.1f} s, p99 {percentile(latencies, 99):.1f} s", flush=True)
    print("  CPU per job: " + ", ".join(f"{name} {1000 * (sec - cpu_before[name]) / jobs:.0f} ms"
                                     for name, sec in cpu(stack).items()), flush=True)
    if completed < jobs:
        raise SystemExit(f"{jobs - completed} jobs did not complete within {deadline_sec:g} s")
    return {"launched_sec": round(max(launched) - started, 1), "jobs_per_sec": round(len(launched) / (max(launched) - started), 2),
            "completed_sec": round(max(finished) - started, 1), "starting_p50_sec": round(percentile(latencies, 50), 2),
            "starting_p99_sec": round(percentile(latencies, 99), 2)}


def run(args, workdir: Path) -> None:
    """`--batches` batches of `--jobs`, one after the other: memory that grows batch after batch leaks,
    memory that grows once is the high-water mark of the first."""
    with bench_stack(workdir, database=args.database, server_workers=args.server_workers, run_method="local",
                     worker_type="dendro-local", app="noop") as stack:
        rss = [memory(stack)]
        figures = []
        for _ in range(args.batches):
            figures.append(run_batch(stack, args.jobs, server_setup(args), args.deadline_sec))
            rss.append(memory(stack))
        prefect_floor = floor(stack.prefect, args.floor_runs, callers=8)
    for process in rss[0]:
        print(f"  RSS of the {process}: " + " → ".join(f"{sample[process]:.0f}" for sample in rss)
              + " MB (before, then after each batch)", flush=True)
    ratio = figures[0]["jobs_per_sec"] / prefect_floor["lifecycle"]
    print(f"launches/s of the first batch over Prefect's floor (a run's whole life): {ratio:.2f}", flush=True)
    print(json.dumps({"bench": "throughput", "database": args.database, "server_workers": args.server_workers,
                      "jobs": args.jobs, "batches": figures,
                      "floor_runs_per_sec": round(prefect_floor["lifecycle"], 2), "ratio_to_floor": round(ratio, 2),
                      "rss_mb": [{name: round(mb) for name, mb in sample.items()} for sample in rss]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=1, help="batches of --jobs, one after the other")
    add_server_options(parser)
    parser.add_argument("--deadline-sec", type=float, default=1800.0)
    parser.add_argument("--floor-runs", type=int, default=300, help="flow runs of Prefect's floor, measured after")
    parser.add_argument("--workdir", type=Path, help="keep the stack's files in DIR/throughput (a temporary directory by default)")
    args = parser.parse_args()
    with bench_workdir(args.workdir, "throughput") as workdir:
        run(args, workdir)

if __name__ == "__main__":
    main()
