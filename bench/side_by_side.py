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

What the original needs to run against the stand-in, written by this script into its work directory:

- PubSub. The daemon subscribes with the pubnub SDK at PubNub's default origin: it reads only the key,
  channel and user of `pubsub_subscription` (as dendro-prefect does, with no `pubsub_origin`). PubNub cannot
  be reached from here, and without PubSub the daemon polls `unfinished_jobs` once every 600 s, so a
  job waiting for a free slot waits up to 10 minutes. The pubnub SDK's own hook, the environment
  variable PUBNUB_REQUEST_HANDLER, loads a request handler (written here) that sends the SDK's requests
  to the stand-in's PubNub-compatible endpoint instead, so the daemon runs its own code path: a hint,
  a poll of `unfinished_jobs`, launches. `--original-pubsub polling` measures it the way it runs with
  PubNub unreachable instead (the mock subscribe key: about jobs/2 × 10 minutes).
- DENDRO_URL. The daemon writes DENDRO_URL=https://dendro.vercel.app into every job's environment, on
  top of its own environment, which it hands on whole. The app's executable is a wrapper that restores
  the stand-in's URL from BENCH_CENTRAL_URL, a variable of the daemon's environment.
- `jobs/` exists before the daemon starts: its cleanup process spins on a core until it does.

    .venv/bin/python bench/side_by_side.py [--jobs 20] [--job-sec 4] [--sdk-bin DIR] [--original-venv DIR]
        [--database postgres|sqlite] [--server-workers 2] [--original-pubsub pubsub|polling] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shlex
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from common import APPS, REPO, SDK_BIN, add_server_options, bench_stack, bench_workdir, percentile, server_setup

from dendro_prefect.protocol.signing import generate_keypair, make_resource_code
from dendro_prefect.stand_in.admin_client import StandInAdmin
from dendro_prefect.stand_in.process import running_stand_in

APP = "count_starts"
POOL = "bench-local"  # bench_stack's pool for run method local
ORIGINAL_CAP = 2  # the original's max_simultaneous_local_jobs (compute_resource/JobManager.py)
PREFECT_LIMITS = {2: 0.8, 8: 0.25}  # the local pool's concurrency limit → the goal for the wall-time ratio
FINAL = ("completed", "failed")
HANDLER_MODULE = "bench_pubnub_origin"
LISTENING = "bench: PubSub long-poll"  # the handler's line once the SDK's handshake is done
DAEMON_RUNNING = "Compute resource is running"  # the daemon's line after its first round

PUBNUB_HANDLER = f'''"""Written by bench/side_by_side.py, loaded by the original daemon's pubnub SDK through its
PUBNUB_REQUEST_HANDLER hook: the SDK's requests go to the stand-in's PubNub-compatible endpoint
(BENCH_PUBNUB_ORIGIN) instead of PubNub's hosts, which the daemon cannot be told about."""

import os
import sys
from urllib.parse import parse_qs

from pubnub.request_handlers.httpx import HttpxRequestHandler


class StandInOrigin(HttpxRequestHandler):
    listening = False

    def __init__(self, pubnub):
        pubnub.config.origin = os.environ["BENCH_PUBNUB_ORIGIN"]
        pubnub.config.ssl = False
        if pubnub.base_origin != pubnub.config.origin:
            raise RuntimeError("the pubnub SDK kept PubNub's origin (a locked configuration?)")
        super().__init__(pubnub)

    def threaded_request(self, endpoint_name, platform_options, endpoint_call_options, callback, cancellation_event):
        """Says once that the SDK long-polls from a timetoken: its handshake is done, so nothing published
        from now on is lost (the stand-in keeps what comes between two long-polls)."""
        if not StandInOrigin.listening and parse_qs(endpoint_call_options.query_string).get("tt", ["0"]) != ["0"]:
            StandInOrigin.listening = True
            print("{LISTENING} at", self.pubnub.config.origin, file=sys.stderr, flush=True)
        return super().threaded_request(endpoint_name, platform_options, endpoint_call_options, callback,
                                        cancellation_event)
'''


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


# --- processes: what we started, found by a mark in their environment --------------------------------


def processes_marked(mark: str) -> list[int]:
    """PIDs of the processes whose environment holds `mark` (VAR=value). The daemon and the workers
    hand their environment on to every job, and the jobs run in sessions of their own (the original
    launches them with start_new_session), so a process group would miss them; the mark does not."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark.encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def stop_leftovers(mark: str, what: str, grace_sec: float = 5.0) -> None:
    """The SDK's job monitors end within a second of their job; whatever carries the mark after
    `grace_sec` is stopped (SIGTERM, then SIGKILL) and reported."""
    deadline = time.monotonic() + grace_sec
    while (pids := processes_marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not pids:
        return
    print(f"note: {len(pids)} processes of {what} were still running after it stopped; stopping them", flush=True)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(2)
        if not (pids := processes_marked(mark)):
            return


# --- the original daemon ------------------------------------------------------------------------------


def write_node(node: Path, resource_id: str, private_key: str) -> None:
    """The original's configuration file in its working directory (YAML; JSON is YAML too), 0600: it
    holds the private key."""
    node.mkdir(parents=True, exist_ok=True)
    config = {"COMPUTE_RESOURCE_ID": resource_id, "COMPUTE_RESOURCE_PRIVATE_KEY": private_key,
              "CONTAINER_METHOD": "", "DEFAULT_JOB_RUN_METHOD": "local", "AVAILABLE_JOB_RUN_METHODS": "local"}
    fd = os.open(node / ".dendro-compute-resource-node.yaml", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(config, handle)
    (node / "jobs").mkdir(exist_ok=True)


def write_app(directory: Path, sdk_bin: Path) -> Path:
    """The app's spec with the wrapper as its executable (the original runs it as it is, in the job's
    working directory, so it must be absolute); returns the spec's path."""
    wrapper = directory / f"{APP}.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# The original daemon sets DENDRO_URL=https://dendro.vercel.app for every job; the stand-in's URL\n"
        "# comes back from BENCH_CENTRAL_URL, which the daemon's environment hands on to the job.\n"
        'export DENDRO_URL="$BENCH_CENTRAL_URL"\n'
        f"exec {shlex.quote(str(sdk_bin / 'python3'))} {shlex.quote(str(APPS / APP / 'main.py'))}\n")
    wrapper.chmod(0o755)
    spec = json.loads((APPS / APP / "spec.json").read_text())
    spec["appExecutable"] = spec["executable"] = str(wrapper)
    spec_file = directory / f"{APP}.spec.json"
    spec_file.write_text(json.dumps(spec, indent=4))
    return spec_file


def daemon_env(admin: StandInAdmin, sdk_bin: Path, mark: str, handler_dir: Path | None) -> dict[str, str]:
    """The daemon's environment: the stand-in's URL, the SDK's bin first on PATH (the job's SDK runs
    `dendro internal-job-monitor`), unbuffered output (its log shows when it is ready), the mark, and
    with PubSub the request handler of the pubnub SDK."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VIRTUAL_ENV", "PYTHON"))}
    name, value = mark.split("=", 1)
    env.update({"DENDRO_URL": admin.url, "BENCH_CENTRAL_URL": admin.url, "PYTHONUNBUFFERED": "1", name: value,
                "PATH": f"{sdk_bin}{os.pathsep}{os.environ['PATH']}"})
    if handler_dir is not None:
        env.update({"PYTHONPATH": str(handler_dir), "PUBNUB_REQUEST_HANDLER": f"{HANDLER_MODULE}.StandInOrigin",
                    "BENCH_PUBNUB_ORIGIN": urlsplit(admin.url).netloc})
    return env


def original_venv(venv: Path) -> Path:
    """The original daemon's own virtual environment, made on first use (dendro 0.2.17 with its
    compute-resource extra: the daemon refuses to start without the pubnub SDK); returns its bin."""
    if not (venv / "bin" / "dendro").exists():
        print(f"making the original daemon's virtual environment {venv} (once)", flush=True)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        subprocess.run([venv / "bin" / "pip", "install", "--quiet", "--disable-pip-version-check",
                        "dendro[compute_resource]==0.2.17"], check=True)
    return venv / "bin"


def wait_ready(process: subprocess.Popen, log: Path, admin: StandInAdmin, resource_id: str, line: str,
               timeout_sec: float = 120.0) -> None:
    """Up means: it reported its apps' spec and said `line` (listening on PubSub, or its first round done)."""
    deadline = time.monotonic() + timeout_sec
    while admin.resource(resource_id)["spec"] is None or line not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            state = (f"exited with {process.returncode}" if process.returncode is not None
                     else f"is not ready after {timeout_sec:g} s")
            tail = log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"the original daemon {state}; its log ends with:\n{tail}")
        time.sleep(0.2)


@contextmanager
def original_daemon(workdir: Path, sdk_bin: Path, pubsub: bool, mark: str) -> Iterator[Target]:
    """`dendro start-compute-resource` on a stand-in of its own, registered, with the app, and up."""
    with running_stand_in(workdir / "central", mock_pubsub=not pubsub) as admin:
        resource_id, private_key = generate_keypair()
        admin.approve(resource_id, make_resource_code(private_key), name="original daemon")
        admin.set_apps(resource_id, [{"name": APP, "specUri": write_app(workdir, sdk_bin).as_uri()}])
        node = workdir / "node"
        write_node(node, resource_id, private_key)
        handler_dir = None
        if pubsub:
            handler_dir = workdir / "pubnub-handler"
            handler_dir.mkdir(exist_ok=True)
            (handler_dir / f"{HANDLER_MODULE}.py").write_text(PUBNUB_HANDLER)
        log_path = workdir / "daemon.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen([sdk_bin / "dendro", "start-compute-resource"], cwd=node, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       env=daemon_env(admin, sdk_bin, mark, handler_dir))
        try:
            wait_ready(process, log_path, admin, resource_id, LISTENING if pubsub else DAEMON_RUNNING)
            yield Target(admin, resource_id)
        finally:
            stop_group(process)
            stop_leftovers(mark, "the original daemon")


def stop_group(process: subprocess.Popen) -> None:
    """The daemon, its PubNub thread and its cleanup process (one process group: we started it in a
    session of its own); its jobs have sessions of their own (see stop_leftovers)."""
    for sig, wait_sec in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=wait_sec)
            return
        except subprocess.TimeoutExpired:
            pass


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
        with original_daemon(workdir / "original", original_bin, pubsub, mark) as target:
            setup = f"original daemon (dendro 0.2.17, cap {ORIGINAL_CAP}, {'PubSub' if pubsub else 'polling only'})"
            poll_sec = 0.0 if pubsub else 600.0
            original = run_jobs(target, setup, args.jobs, args.job_sec,
                                deadline_for(args.jobs, args.job_sec, ORIGINAL_CAP, poll_sec))
        print(original.line(args.job_sec), flush=True)
        results = run_prefect(workdir / "prefect", args, mark)
    ratios(original, results)


if __name__ == "__main__":
    main()
