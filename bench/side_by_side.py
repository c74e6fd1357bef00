"""Side by side: the same jobs through the original Dendro daemon (`dendro start-compute-resource` of
dendro 0.2.17) and through dendro-prefect, in one run, and the ratio dendro-prefect / original.

The jobs: `--jobs` jobs of the count_starts test app (real dendro SDK, container method none: plain
processes), each sleeping `--job-sec`, created at once at a central stand-in. For each setup, from the
central's own timestamps: the wall time from the creation call to the last job `completed`, and the
intake of each job (created → `starting`, i.e. launched) p50/p99. The setups:

- the original daemon in its own virtual environment (`--original-venv`, `.venv-original` by default,
  made on first use with `dendro[compute_resource]==0.2.17`: the daemon refuses to start without the
  pubnub SDK), at its hard-coded cap of 2 local jobs, pointed at a stand-in of its own with DENDRO_URL;
- dendro-prefect (bench/common.py), the local pool's concurrency limit 2, then 8, on one stack.

Goals (wall time, dendro-prefect / original): at most 0.8 at limit 2, at most 0.25 at limit 8.

What the original needs to run against the stand-in (PubSub through the pubnub SDK's request-handler hook,
its jobs' DENDRO_URL): see tests/original_daemon.py. `--original-pubsub polling` measures it the way it runs
with PubNub unreachable instead (the mock subscribe key: it polls every 600 s, about jobs/2 × 10 minutes).

    .venv/bin/python bench/side_by_side.py [--jobs 20] [--job-sec 4] [--sdk-bin DIR] [--original-venv DIR]
        [--database postgres|sqlite] [--server-workers 2] [--original-pubsub pubsub|polling] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from common import APPS, REPO, SDK_BIN, add_server_options, bench_stack, bench_workdir, percentile, server_setup

from dendro_prefect.protocol.signing import generate_keypair, make_resource_code
from dendro_prefect.stand_in.admin_client import StandInAdmin
from dendro_prefect.stand_in.process import running_stand_in
from tests.original_daemon import ORIGINAL_CAP, original_daemon, stop_leftovers, write_app, write_node

APP = "count_starts"
POOL = "bench-local"  # bench_stack's pool for run method local
PREFECT_LIMITS = {2: 0.8, 8: 0.25}  # the local pool's concurrency limit → the goal for the wall-time ratio
FINAL = ("completed", "failed")


@dataclass
class Result:
    setup: str
    jobs: int
    wall_sec: float
    intake_sec: list[float]
    ran_sec: list[float]  # running → completed: the app itself, the same whoever launched it

    def p(self, q: int) -> float:
        return percentile(self.intake_sec, q)

    def line(self, job_sec: float) -> str:
        return (f"{self.setup}: {self.jobs} jobs of {job_sec:g} s all completed in {self.wall_sec:.1f} s; "
                f"created → starting p50 {self.p(50):.2f} s, p99 {self.p(99):.2f} s; "
                f"the app ran (running → completed) p50 {percentile(self.ran_sec, 50):.2f} s")


# --- the jobs and what they measure ---------------------------------------------------------------------


@dataclass
class Target:
    """A compute resource at a central: the original daemon's, or dendro-prefect's."""

    admin: StandInAdmin
    resource_id: str


def job_requests(target: Target, jobs: int, job_sec: float) -> list[dict]:
    """`jobs` jobs of the app's processor sleeping `job_sec` each, local, no inputs or outputs: the same
    for both (bench/common.py's requests, with the sleep)."""
    processor = json.loads((APPS / APP / "spec.json").read_text())["processors"][0]
    request = {
        "computeResourceId": target.resource_id,
        "processorName": processor["name"], "inputFiles": [], "outputFiles": [],
        "inputParameters": [{"name": "min_sec", "value": job_sec}, {"name": "max_sec", "value": job_sec}],
        "processorSpec": processor,
        "requiredResources": {"numCpus": 1, "numGpus": 0, "memoryGb": 0.1, "timeSec": 600}, "runMethod": "local"}
    return [dict(request, projectId=project_id) for project_id in target.admin.projects_for("side-by-side", jobs)]


def run_jobs(target: Target, setup: str, jobs: int, job_sec: float, deadline_sec: float) -> Result:
    """Create the jobs in one call, wait for all to end; the times are the central's own timestamps,
    so how often this looks does not change them."""
    requests = job_requests(target, jobs, job_sec)
    started = time.time()
    job_ids = set(target.admin.create_jobs(requests))
    deadline = time.monotonic() + deadline_sec
    while True:
        documents = [d for d in target.admin.jobs(target.resource_id) if d["jobId"] in job_ids]
        if all(d["status"] in FINAL for d in documents) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    unfinished = [d for d in documents if d["status"] != "completed"]
    if unfinished:
        example = {k: unfinished[0].get(k) for k in ("jobId", "status", "error")}
        raise SystemExit(f"{setup}: {len(unfinished)} of {jobs} jobs did not complete within {deadline_sec:g} s, "
                         f"e.g. {example}")
    return Result(setup, jobs, max(d["timestampFinished"] for d in documents) - started,
                  [d["timestampStarting"] - d["timestampCreated"] for d in documents],
                  [d["timestampFinished"] - d["timestampStarted"] for d in documents])


def deadline_for(jobs: int, job_sec: float, cap: int, poll_sec: float = 0.0) -> float:
    """Generous: every round of `cap` jobs may take the job, the SDK's 3 s look at its child, a launch
    and a poll interval, three times over."""
    rounds = -(-jobs // cap)
    return 120 + 3 * rounds * (job_sec + 3 + 5 + poll_sec)


# --- the original daemon ------------------------------------------------------------------------------


def original_venv(venv: Path) -> Path:
    """The original daemon's own virtual environment, made on first use (dendro 0.2.17 with its
    compute-resource extra: the daemon refuses to start without the pubnub SDK); returns its bin."""
    if not (venv / "bin" / "dendro").exists():
        print(f"making the original daemon's virtual environment {venv} (once)", flush=True)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        subprocess.run([venv / "bin" / "pip", "install", "--quiet", "--disable-pip-version-check",
                        "dendro[compute_resource]==0.2.17"], check=True)
    return venv / "bin"


@contextmanager
def original_target(workdir: Path, sdk_bin: Path, pubsub: bool, mark: str) -> Iterator[Target]:
    """`dendro start-compute-resource` on a stand-in of its own, registered, with the app, and up."""
    with running_stand_in(workdir / "central", mock_pubsub=not pubsub) as admin:
        resource_id, private_key = generate_keypair()
        admin.approve(resource_id, make_resource_code(private_key), name="original daemon")
        admin.set_apps(resource_id, [{"name": APP, "specUri": write_app(workdir, APPS / APP, sdk_bin).as_uri()}])
        node = workdir / "node"
        write_node(node, resource_id, private_key)
        try:
            with original_daemon(node, admin, resource_id, sdk_bin, pubsub, mark):
                yield Target(admin, resource_id)
        finally:
            stop_leftovers(mark, "the original daemon")


# --- dendro-prefect -------------------------------------------------------------------------------------


def set_pool_limit(limit: int) -> None:
    """Prefect's own work-pool limit: dendro-prefect's knob for what the original hard-codes."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    async def update() -> None:
        async with get_client() as client:
            await client.update_work_pool(POOL, WorkPoolUpdate(concurrency_limit=limit))

    asyncio.run(update())


def run_prefect(workdir: Path, args: argparse.Namespace, mark: str) -> dict[int, Result]:
    """One stack, one batch per pool limit, one after the other (every job of a batch ended)."""
    name, value = mark.split("=", 1)
    results = {}
    try:
        with bench_stack(workdir, database=args.database, server_workers=args.server_workers, run_method="local", worker_type="dendro-local", app=APP,
                         worker_env={name: value}, sdk_bin=args.sdk_bin) as stack:
            for limit in PREFECT_LIMITS:
                set_pool_limit(limit)
                setup = f"dendro-prefect, pool limit {limit} ({server_setup(args)})"
                results[limit] = run_jobs(Target(stack.admin, stack.resource_id), setup, args.jobs, args.job_sec,
                                          deadline_for(args.jobs, args.job_sec, limit))
                print(results[limit].line(args.job_sec), flush=True)
    finally:
        stop_leftovers(mark, "dendro-prefect")
    return results


# --- main -----------------------------------------------------------------------------------------------


def ratios(original: Result, results: dict[int, Result]) -> None:
    for limit, goal in PREFECT_LIMITS.items():
        result = results[limit]
        wall = result.wall_sec / original.wall_sec
        print(f"dendro-prefect limit {limit} / original (cap {ORIGINAL_CAP}): wall {wall:.2f}x "
              f"(goal ≤ {goal:g}x: {'met' if wall <= goal else 'NOT met'}), intake p50 "
              f"{result.p(50) / original.p(50):.2f}x, p99 {result.p(99) / original.p(99):.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--job-sec", type=float, default=4.0, help="how long each job's processor sleeps")
    parser.add_argument("--sdk-bin", type=Path, default=SDK_BIN,
                        help="the bin directory of the virtual environment with the dendro SDK that dendro-prefect's "
                        "jobs run with (scripts/test.sh makes it)")
    parser.add_argument("--original-venv", type=Path, default=REPO / ".venv-original",
                        help="the original daemon's virtual environment (made when missing); its jobs run its SDK")
    add_server_options(parser)
    parser.add_argument("--original-pubsub", choices=["pubsub", "polling"], default="pubsub",
                        help="the original's PubSub through the stand-in, or none (it then polls every 600 s)")
    parser.add_argument("--workdir", type=Path, help="keep the files (logs, databases, job directories) in a new "
                        "directory under this one; a temporary directory by default")
    args = parser.parse_args()
    args.sdk_bin = args.sdk_bin.resolve()
    original_bin = original_venv(args.original_venv.resolve())
    mark = f"DENDRO_SIDE_BY_SIDE={secrets.token_hex(8)}"
    pubsub = args.original_pubsub == "pubsub"
    with bench_workdir(args.workdir, time.strftime("side-by-side-%Y%m%d-%H%M%S")) as workdir:
        (workdir / "original").mkdir(exist_ok=True)
        with original_target(workdir / "original", original_bin, pubsub, mark) as target:
            setup = f"original daemon (dendro 0.2.17, cap {ORIGINAL_CAP}, {'PubSub' if pubsub else 'polling only'})"
            poll_sec = 0.0 if pubsub else 600.0
            original = run_jobs(target, setup, args.jobs, args.job_sec,
                                deadline_for(args.jobs, args.job_sec, ORIGINAL_CAP, poll_sec))
        print(original.line(args.job_sec), flush=True)
        results = run_prefect(workdir / "prefect", args, mark)
    ratios(original, results)


if __name__ == "__main__":
    main()
