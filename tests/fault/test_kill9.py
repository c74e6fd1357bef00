"""Kill -9 the controller and the job pool's worker at random moments while many short jobs run: every
job still reaches a final state at the central, none is launched twice, nothing is left behind.

Real parts: a Prefect server (the embedded default, PostgreSQL), the stand-in central, the subscription flow run by a `process`
worker of a pool of its own, a dendro-local (or dendro-slurm) worker, and the count_starts app
(real dendro SDK, tests/fixtures/apps/count_starts), which appends a line to a file each time a worker
launches it: the file counts the launches of every job.

The kills come from a seeded RNG (the seed is printed; DENDRO_KILL9_SEED=<seed> replays the schedule):
- the controller: SIGKILL to its process worker and to the process of the subscription flow run (the
  worker's child, which outlives the worker's SIGKILL and would go on running the flow). Nothing in
  Prefect notices the loss (no heartbeat ends a run of a process worker): the run stays Running. The
  test restarts the controller as an admin would: the lost run is marked Crashed, a new process worker
  and a new subscription flow run are started.
- the job pool's worker: SIGKILL (its apps run on), and after a short random pause a worker under the
  same name, which takes up its predecessor's jobs.

Then: every job is completed or failed at the central (a failure with a one-line reason), no job was
launched twice and every completed job exactly once (the start file), each job has exactly one flow run
and all of them end, and no app process or Slurm job of the test is left. The counts are printed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prefect.client.schemas.actions import WorkPoolUpdate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import arun_deployment
from prefect.states import Crashed

from dendro_prefect.config import CONFIG_FILE_NAME
from dendro_prefect.controller.routing import DEFAULT_DEPLOYMENTS, resource_tag
from dendro_prefect.embedded import prefect_worker
from dendro_prefect.embedded_controller import cancel_subscription_run, register_resource, where_run_stands
from dendro_prefect.stand_in.admin_client import StandInAdmin
from dendro_prefect.stand_in.process import running_stand_in
from tests.conftest import FIXTURES, REPO, parent_pids, process_alive
from tests.e2e.test_slurm_pool import slurm, slurm_ready
from tests.secrets_scan import record_secret
from tests.stack import PrefectStack, create_job_pool, prefect_api, run, set_state, wait_for, worker_name

COUNT_STARTS = FIXTURES / "apps" / "count_starts"
STARTS_FILE = "starts.log"  # written by the app: `start <job id> <pid>` per launch, `run ...` per processor run
FINAL_STATUSES = ("completed", "failed")

# The count is 200 jobs per pool (DENDRO_KILL9_LOCAL_JOBS=200 DENDRO_KILL9_SLURM_JOBS=200, about 10 and
# 12 minutes on this 2-core machine); the test command runs fewer, which still sees each kind of kill
# at least once, to stay within the CI budget.
LOCAL_JOBS = int(os.environ.get("DENDRO_KILL9_LOCAL_JOBS", "10"))
# The one-node test cluster runs 2 one-CPU jobs at a time, ~3.5 s of queue per job.
SLURM_JOBS = int(os.environ.get("DENDRO_KILL9_SLURM_JOBS", "6"))
# The local pool runs this many jobs at once (the pool's concurrency limit): each job is five Python
# processes of the SDK (the app, its child and three monitors), and 200 at once would not fit this
# machine's memory. CPU is the limit: 200 jobs took 580-640 s on 2 busy cores.
LOCAL_CONCURRENCY = 12
# How long the jobs may take to end, per job, beyond 2 minutes (measured: ~3.2 s local, ~3.5 s Slurm).
SEC_PER_JOB = {"local": 4.0, "slurm": 5.0}

POLL_INTERVAL_SEC = 2.0
SETTLE_SEC = 10.0
FIRST_KILL_SEC = (3.0, 15.0)  # after the jobs are created
# Between two kills of a kind; a restarted worker needs ~5-15 s on a busy 2-core machine before it runs
# anything (the subscription flow ~20-40 s), and a kill before that tests little.
KILL_GAP_SEC = {"controller": (25.0, 50.0), "worker": (10.0, 30.0)}
MAX_KILLS = {"controller": 3, "worker": 4}
RESTART_PAUSE_SEC = (0.5, 3.0)
KILLS_STOP_AT = 0.1  # no more kills once fewer than this share of the jobs is unfinished


@dataclass
class Chaos:
    """A compute resource's controller and job pool worker, killed and restarted at random moments.
    Every process it starts is stopped (by PID) when `stack` closes."""

    prefect: PrefectStack
    admin: StandInAdmin
    resource_id: str
    workdir: Path
    pool: str
    worker_type: str
    worker_env: dict
    subscription_parameters: dict
    stack: ExitStack
    rng: random.Random
    controller: subprocess.Popen | None = None
    job_worker: subprocess.Popen | None = None
    subscription_runs: list[str] = field(default_factory=list)
    kills: Counter = field(default_factory=Counter)
    flow_processes_killed: int = 0  # subscription flow processes still alive after their worker's SIGKILL
    next_kill: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    @property
    def controller_pool(self) -> str:
        """A process pool of the test's own: its subscription flow runs only on the worker it kills."""
        return f"controller-{self.workdir.name}"

    def log(self, message: str) -> None:
        print(f"  {time.monotonic() - self.started:6.1f} s  {message}", flush=True)

    def start_controller(self) -> None:
        self.controller = self.stack.enter_context(prefect_worker(
            self.prefect.home, self.prefect.api_url, self.controller_pool, "process", REPO,
            f"controller-{self.workdir.name}.log"))
        flow_run = run(arun_deployment(f"dendro-subscription/{self.controller_pool}", timeout=0, as_subflow=False,
                                       parameters=self.subscription_parameters))
        self.subscription_runs.append(str(flow_run.id))
        # Up means running, as an admin would check: a kill before that tests little, and a run that never
        # starts would go unnoticed while the jobs already created complete without it.
        try:
            wait_for(lambda: prefect_api().read_flow_run(flow_run.id).state.is_running(),
                     "the new subscription flow run to start", timeout=120, interval=0.5)
        except AssertionError as error:
            raise AssertionError(f"{error}: {where_run_stands(prefect_api().read_flow_run(flow_run.id))}; its "
                                 f"worker's log ends with:\n{self.controller_log_tail()}") from None

    def controller_log_tail(self, lines: int = 25) -> str:
        """The controller worker's log without its HTTP request lines (the last `lines`)."""
        log = (self.prefect.home / f"controller-{self.workdir.name}.log").read_text(errors="replace")
        return "\n".join([line for line in log.splitlines() if "HTTP Request" not in line][-lines:])

    def start_job_worker(self) -> None:
        self.job_worker = self.stack.enter_context(prefect_worker(
            self.prefect.home, self.prefect.api_url, self.pool, self.worker_type, self.workdir, f"{self.pool}.log",
            self.worker_env, name=worker_name(self.pool)))

    def kill_controller(self) -> None:
        worker = self.controller
        flow_processes = children_of(worker.pid)  # the subscription flow run's process, once it started
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        survivors = [pid for pid in flow_processes if process_alive(pid)]
        for pid in survivors:
            kill(pid)
        self.flow_processes_killed += len(survivors)
        lost = self.subscription_runs[-1]
        pause = self.rng.uniform(*RESTART_PAUSE_SEC)
        time.sleep(pause)
        state = prefect_api().read_flow_run(lost).state
        if not state.is_final():  # as an admin would: the run is lost, and says so
            set_state(lost, Crashed(message="its process worker and flow process were killed (kill -9)"))
        restarted = time.monotonic()
        self.start_controller()
        self.log(f"controller killed (worker {worker.pid}, flow processes {survivors or 'none yet'}); its "
                 f"subscription flow run is {state.name} after {pause:.1f} s; restarted, running after "
                 f"{time.monotonic() - restarted:.1f} s")
        self.kills["controller"] += 1

    def stop_subscription(self) -> None:
        """Cancel the current subscription flow run and wait until it ends (its worker is alive)."""
        try:
            cancel_subscription_run(self.subscription_runs[-1])
        except RuntimeError as error:
            raise AssertionError(f"{error}; its process worker {self.controller.pid} "
                                 f"{'runs' if self.controller.poll() is None else 'has exited'}; its log ends with:\n"
                                 f"{self.controller_log_tail()}") from None

    def kill_job_worker(self) -> None:
        pid = self.job_worker.pid
        self.job_worker.send_signal(signal.SIGKILL)
        self.job_worker.wait()
        pause = self.rng.uniform(*RESTART_PAUSE_SEC)
        time.sleep(pause)
        self.start_job_worker()
        self.log(f"{self.worker_type} worker {pid} killed; restarted after {pause:.1f} s")
        self.kills["worker"] += 1

    def step(self, job_ids: list[str]) -> dict[str, dict] | None:
        """One round of the chaos loop: the jobs once all are final at the central; else kill whatever
        is due. A kind not killed yet is due as soon as a job has ended, and its time is read after the
        kill before it (a controller's restart takes seconds): jobs that end sooner than its first kill
        was drawn (6 Slurm jobs took 19 s once; 14 local jobs 27 s) must not leave it out."""
        jobs = {job["jobId"]: job for job in self.admin.jobs(self.resource_id)}
        unfinished = sum(jobs[job_id]["status"] not in FINAL_STATUSES for job_id in job_ids)
        if unfinished == 0:
            return jobs
        for kind, do_kill in (("controller", self.kill_controller), ("worker", self.kill_job_worker)):
            first = self.kills[kind] == 0
            due = time.monotonic() >= self.next_kill[kind] or (first and unfinished < len(job_ids))
            if self.kills[kind] < MAX_KILLS[kind] and unfinished >= KILLS_STOP_AT * len(job_ids) and due:
                do_kill()
                self.next_kill[kind] = time.monotonic() + self.rng.uniform(*KILL_GAP_SEC[kind])
        return None


def children_of(pid: int) -> list[int]:
    return [child for child, parent in parent_pids().items() if parent == pid]


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def app_processes(starts_dir: Path) -> list[int]:
    """Live processes of a test's apps (the SDK's monitor processes included), which inherit the
    directory that counts their starts; the job workers (`prefect worker start`) have it too."""
    wanted = f"COUNT_STARTS_DIR={starts_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if wanted in environ and b"worker\0start\0" not in command and process_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def flow_runs_of_resource(resource_id: str) -> list[FlowRun]:
    runs: list[FlowRun] = []
    while True:
        page = prefect_api().read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[resource_tag(resource_id)])),
            limit=200, offset=len(runs))
        runs.extend(page)
        if len(page) < 200:
            return runs


def set_pool_concurrency(pool: str, limit: int) -> None:
    prefect_api().update_work_pool(pool, WorkPoolUpdate(concurrency_limit=limit))


def count_starts_requests(admin: StandInAdmin, resource_id: str, run_method: str, count: int) -> list[dict]:
    spec = json.loads((COUNT_STARTS / "spec.json").read_text())["processors"][0]
    request = {
        "computeResourceId": resource_id,
        "processorName": "count_starts", "processorSpec": spec,
        "inputFiles": [], "outputFiles": [], "inputParameters": [],
        "requiredResources": {"numCpus": 1, "numGpus": 0, "memoryGb": 0.5, "timeSec": 120},
        "runMethod": run_method,
    }
    return [dict(request, projectId=project_id) for project_id in admin.projects_for("kill9", count)]


def final_runs_by_job(resource_id: str) -> dict[str, list[FlowRun]] | None:
    """The flow runs of the resource's jobs by job id, once every one has ended."""
    runs = defaultdict(list)
    for flow_run in flow_runs_of_resource(resource_id):
        runs[str(flow_run.parameters.get("job_id"))].append(flow_run)
    return runs if all(r.state.is_final() for rs in runs.values() for r in rs) else None


def unfinished_runs(resource_id: str) -> str:
    runs = [r for r in flow_runs_of_resource(resource_id) if not r.state.is_final()]
    return "\n".join([f"{len(runs)} flow runs not ended:"] + [
        f"  {r.name} {r.state.name} ({r.state.message}) infrastructure={r.infrastructure_pid} "
        f"worker={(r.labels or {}).get('prefect.worker.name')}" for r in runs])


def stuck_jobs(admin: StandInAdmin, resource_id: str, job_ids: list[str]) -> str:
    """The unfinished jobs, each with its flow runs: what a failure of the test shows."""
    jobs = {job["jobId"]: job for job in admin.jobs(resource_id)}
    runs = defaultdict(list)
    for flow_run in flow_runs_of_resource(resource_id):
        runs[str(flow_run.parameters.get("job_id"))].append(
            f"{flow_run.state.name} infrastructure={flow_run.infrastructure_pid} "
            f"worker={(flow_run.labels or {}).get('prefect.worker.name')}")
    unfinished = [job_id for job_id in job_ids if jobs[job_id]["status"] not in FINAL_STATUSES]
    lines = [f"{len(unfinished)} of {len(job_ids)} jobs unfinished:"]
    lines += [f"  {job_id} {jobs[job_id]['status']}: flow runs {runs.get(job_id, [])}" for job_id in unfinished]
    return "\n".join(lines)


def starts_per_job(starts_dir: Path, event: str) -> Counter:
    try:
        lines = (starts_dir / STARTS_FILE).read_text().splitlines()
    except FileNotFoundError:
        return Counter()
    return Counter(line.split()[1] for line in lines if line.split()[0] == event)


def deadline_sec(run_method: str, jobs: int) -> float:
    return jobs * SEC_PER_JOB[run_method] + 120


def kill9_scenario(prefect: PrefectStack, workdir: Path, sdk_bin: Path, *, jobs: int, run_method: str,
                   worker_type: str, job_variables: dict | None = None, concurrency: int | None = None,
                   leftovers=lambda job_ids: [], remove_leftovers=lambda job_ids: None) -> None:
    """`jobs` count_starts jobs of `run_method` under kills, then the checks of the module docstring.
    `leftovers` lists the infrastructure jobs still held for these jobs; `remove_leftovers` removes them."""
    seed = int(os.environ.get("DENDRO_KILL9_SEED", random.randrange(2**32)))
    print(f"\nkill9 {run_method}: seed {seed} (DENDRO_KILL9_SEED={seed} replays the kill schedule)")
    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    starts_dir = workdir / "starts"
    starts_dir.mkdir()
    pool = f"{run_method}-{workdir.name}"
    deployment = create_job_pool(pool, worker_type, job_variables)
    if concurrency is not None:
        set_pool_concurrency(pool, concurrency)
    job_ids: list[str] = []
    with ExitStack() as stack:
        # Last of all, whatever the outcome: no app or infrastructure job of this test outlives it.
        stack.callback(remove_leftovers, job_ids)
        stack.callback(lambda: [kill(pid) for pid in app_processes(starts_dir)])
        admin = stack.enter_context(running_stand_in(workdir / "central"))
        config = register_resource(admin, workdir, [{"name": "count_starts",
                                                     "specUri": (COUNT_STARTS / "spec.json").as_uri()}])
        resource_id, config_file = config.compute_resource_id, workdir / CONFIG_FILE_NAME
        record_secret(config.compute_resource_private_key.get_secret_value(), "compute-resource-key")
        chaos = Chaos(
            prefect, admin, resource_id, workdir, pool, worker_type,
            worker_env={"PATH": f"{sdk_bin}{os.pathsep}{os.environ['PATH']}", "COUNT_STARTS_DIR": str(starts_dir)},
            subscription_parameters={"config_file": str(config_file), "poll_interval_sec": POLL_INTERVAL_SEC,
                                     "deployments": {**DEFAULT_DEPLOYMENTS, run_method: deployment},
                                     "settle_sec": SETTLE_SEC},
            stack=stack, rng=rng)
        create_job_pool(chaos.controller_pool, "process", flow="dendro-subscription")
        chaos.start_job_worker()
        chaos.start_controller()
        try:
            wait_for(lambda: admin.resource(resource_id)["spec"] is not None,
                     "the subscription flow to report the spec", timeout=120)
            chaos.started = started = time.monotonic()
            job_ids += admin.create_jobs(count_starts_requests(admin, resource_id, run_method, jobs))
            chaos.next_kill = {kind: started + rng.uniform(*FIRST_KILL_SEC) for kind in MAX_KILLS}
            try:
                final_jobs = wait_for(lambda: chaos.step(job_ids), "every job to reach a final state at the central",
                                      timeout=deadline_sec(run_method, jobs), interval=0.5)
            except AssertionError as error:
                raise AssertionError(f"{error}\n{stuck_jobs(admin, resource_id, job_ids)}") from None
            wall_sec = time.monotonic() - started
            # Prefect follows the central: every flow run of a job ends.
            try:
                by_job = wait_for(lambda: final_runs_by_job(resource_id), "every flow run to end", timeout=120,
                                  interval=1.0)
            except AssertionError as error:
                raise AssertionError(f"{error}\n{unfinished_runs(resource_id)}") from None
        finally:
            chaos.stop_subscription()

        statuses = Counter(final_jobs[job_id]["status"] for job_id in job_ids)
        failures = {job_id: final_jobs[job_id].get("error") for job_id in job_ids
                    if final_jobs[job_id]["status"] == "failed"}
        starts, runs = starts_per_job(starts_dir, "start"), starts_per_job(starts_dir, "run")
        print(f"kill9 {run_method}: {len(job_ids)} jobs, {statuses['completed']} completed, {statuses['failed']} "
              f"failed; {chaos.kills['controller']} controller kills ({chaos.flow_processes_killed} subscription flow "
              f"processes outlived their worker), {chaos.kills['worker']} {worker_type} worker kills; "
              f"wall time {wall_sec:.1f} s; max starts per job {max(starts.values(), default=0)}, "
              f"max processor runs per job {max(runs.values(), default=0)}")
        for job_id, error in failures.items():
            print(f"  failed {job_id}: {error}")

        assert set(statuses) <= set(FINAL_STATUSES)
        assert all(error and "\n" not in error for error in failures.values()), failures
        twice = {job_id: (starts[job_id], runs[job_id]) for job_id in job_ids if starts[job_id] > 1 or runs[job_id] > 1}
        assert not twice, f"jobs launched more than once (starts, processor runs): {twice}"
        unstarted = [job_id for job_id in job_ids if final_jobs[job_id]["status"] == "completed"
                     and starts[job_id] != 1]
        assert not unstarted, f"completed jobs without exactly one recorded start: {unstarted}"
        not_one = {job_id: [f"{r.name} {r.state.name}" for r in by_job.get(job_id, [])] for job_id in job_ids
                   if len(by_job.get(job_id, [])) != 1}
        assert not not_one, f"jobs without exactly one flow run: {not_one}"
        assert chaos.kills["controller"] >= 1 and chaos.kills["worker"] >= 1, chaos.kills
        wait_for(lambda: not app_processes(starts_dir), "no process of the count_starts app left", timeout=60,
                 interval=1.0)
        wait_for(lambda: not leftovers(job_ids), "no infrastructure job left", timeout=60, interval=1.0)


@pytest.mark.timeout(deadline_sec("local", LOCAL_JOBS) + 480)
def test_kill9_of_controller_and_local_worker_loses_and_doubles_no_job(prefect_stack, tmp_path, sdk_bin):
    kill9_scenario(prefect_stack, tmp_path / "kill9-local", sdk_bin, jobs=LOCAL_JOBS, run_method="local",
                   worker_type="dendro-local", concurrency=LOCAL_CONCURRENCY)


def slurm_jobs_of(job_ids: list[str]) -> list[str]:
    """Our jobs Slurm still holds (squeue lists pending and running jobs by default)."""
    names = {f"dendro-{job_id}" for job_id in job_ids}
    return [line for line in slurm("squeue", "--noheader", "--format=%i %j %T").splitlines()
            if line.split()[1] in names]


def scancel_leftovers(job_ids: list[str]) -> None:
    ids = [line.split()[0] for line in slurm_jobs_of(job_ids)]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)


@pytest.mark.timeout(deadline_sec("slurm", SLURM_JOBS) + 480)
def test_kill9_of_controller_and_slurm_worker_loses_and_doubles_no_job(prefect_stack, tmp_path, sdk_bin):
    slurm_ready()
    kill9_scenario(prefect_stack, tmp_path / "kill9-slurm", sdk_bin, jobs=SLURM_JOBS, run_method="slurm",
                   worker_type="dendro-slurm", job_variables={"time_margin_sec": 0, "partition": "debug"},
                   leftovers=slurm_jobs_of, remove_leftovers=scancel_leftovers)
