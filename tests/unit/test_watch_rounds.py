"""The worker's batched observation round (`workers/watch.py`) with fake launchers, a fake central and fake
cancel requests: one call per backend, per central and to Prefect each round, whatever the number of jobs."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import pytest

from dendro_prefect.workers.launch import InfrastructureState
from dendro_prefect.workers.watch import Observation, Watch, WatchedJob
from tests.unit.fakes import FakeLauncher, eventually

pytestmark = pytest.mark.anyio

RUNNING = InfrastructureState("running")
EXITED = InfrastructureState("exited", 0)


class Statuses:
    """The central's statuses of unfinished jobs (absent: finished or deleted), counting its calls."""

    def __init__(self, statuses: dict[str, str]) -> None:
        self.statuses = statuses
        self.asked: list[list[str]] = []
        self.fail_with: Exception | None = None

    async def __call__(self, job_ids: list[str]) -> dict[str, str | None]:
        self.asked.append(list(job_ids))
        if self.fail_with is not None:
            raise self.fail_with
        return {job_id: self.statuses.get(job_id) for job_id in job_ids}


class CancelRequests:
    def __init__(self, cancelled: set = frozenset()) -> None:
        self.cancelled = set(cancelled)
        self.asked: list[list] = []
        self.fail_with: Exception | None = None

    async def __call__(self, flow_run_ids: list) -> set:
        self.asked.append(list(flow_run_ids))
        if self.fail_with is not None:
            raise self.fail_with
        return self.cancelled & set(flow_run_ids)


def watched(job_id: str, infrastructure_id: str, launcher, statuses) -> WatchedJob:
    return WatchedJob(uuid4(), job_id, infrastructure_id, launcher, statuses)


async def observe(*jobs: WatchedJob) -> list[Observation]:
    return [await asyncio.wait_for(job.next_observation(), 5) for job in jobs]


async def test_one_round_asks_each_backend_prefect_and_the_central_once_for_all_their_jobs():
    slurm, local = FakeLauncher({"slurm:1": RUNNING, "slurm:2": EXITED}), FakeLauncher({"process:9": RUNNING})
    central = Statuses({"p.a": "running", "p.b": "running", "p.c": "starting"})
    cancels = CancelRequests()
    watch = Watch(cancels, interval=3600, central_interval=3600)
    jobs = [watched("p.a", "slurm:1", slurm, central), watched("p.b", "slurm:2", slurm, central),
            watched("p.c", "process:9", local, central)]
    for job in jobs:
        watch.add(job)
    observations = await observe(*jobs)
    assert slurm.asked == [["slurm:1", "slurm:2"]] and local.asked == [["process:9"]]
    assert cancels.asked == [[job.flow_run_id for job in jobs]]
    assert central.asked == [["p.a", "p.b", "p.c"]]
    assert [o.infrastructure for o in observations] == [RUNNING, EXITED, RUNNING]
    assert [o.central_status for o in observations] == ["running", "running", "starting"]
    for job in jobs:
        watch.remove(job)


async def test_an_observation_says_which_runs_were_cancelled_and_which_jobs_left_the_central():
    launcher = FakeLauncher({"slurm:1": RUNNING, "slurm:2": RUNNING})
    central = Statuses({"p.a": "running"})
    first, second = watched("p.a", "slurm:1", launcher, central), watched("p.b", "slurm:2", launcher, central)
    watch = Watch(CancelRequests({second.flow_run_id}), interval=3600, central_interval=3600)
    watch.add(first)
    watch.add(second)
    a, b = await observe(first, second)
    assert a == Observation(RUNNING, cancel_requested=False, central_status="running", central_known=True)
    assert b == Observation(RUNNING, cancel_requested=True, central_status=None, central_known=True)
    watch.remove(first)
    watch.remove(second)


async def test_a_backend_that_cannot_answer_leaves_only_its_own_jobs_unobserved(caplog):
    broken, working = FakeLauncher(), FakeLauncher({"process:9": RUNNING})
    broken.fail_with = RuntimeError("squeue: error: slurm_load_jobs error: Socket timed out")
    central = Statuses({"p.a": "running", "p.b": "running"})
    jobs = [watched("p.a", "slurm:1", broken, central), watched("p.b", "process:9", working, central)]
    watch = Watch(CancelRequests(), interval=3600, central_interval=3600)
    for job in jobs:
        watch.add(job)
    assert [o.infrastructure for o in await observe(*jobs)] == [None, RUNNING]
    assert "cannot read job states from FakeLauncher: squeue: error: slurm_load_jobs error" in caplog.text
    for job in jobs:
        watch.remove(job)


async def test_an_unreachable_central_leaves_its_statuses_unknown_and_prefects_failure_no_cancel(caplog):
    central = Statuses({})
    central.fail_with = ConnectionError("central down")
    cancels = CancelRequests()
    cancels.fail_with = ConnectionError("Prefect down")
    job = watched("p.a", "slurm:1", FakeLauncher({"slurm:1": RUNNING}), central)
    watch = Watch(cancels, interval=3600, central_interval=3600)
    watch.add(job)
    assert await observe(job) == [Observation(RUNNING, cancel_requested=False, central_status=None,
                                              central_known=False)]
    assert "cannot read job statuses from the central: central down" in caplog.text
    assert "cannot read cancel requests from Prefect: Prefect down" in caplog.text
    watch.remove(job)


async def test_rounds_repeat_every_interval_and_ask_the_central_only_every_central_interval():
    launcher = FakeLauncher({"slurm:1": RUNNING})
    central = Statuses({"p.a": "running"})
    job = watched("p.a", "slurm:1", launcher, central)
    watch = Watch(CancelRequests(), interval=0.001, central_interval=3600)
    watch.add(job)
    await observe(job)
    await eventually(lambda: len(launcher.asked) >= 3, "three rounds")
    assert len(central.asked) == 1
    watch.remove(job)


async def test_jobs_sharing_a_central_are_asked_about_together_and_other_centrals_apart():
    launcher = FakeLauncher({"slurm:1": RUNNING, "slurm:2": RUNNING, "slurm:3": RUNNING})
    one, other = Statuses({"p.a": "running", "p.b": "running"}), Statuses({"q.c": "starting"})
    jobs = [watched("p.a", "slurm:1", launcher, one), watched("p.b", "slurm:2", launcher, one),
            watched("q.c", "slurm:3", launcher, other)]
    watch = Watch(CancelRequests(), interval=3600, central_interval=3600)
    for job in jobs:
        watch.add(job)
    await observe(*jobs)
    assert one.asked == [["p.a", "p.b"]] and other.asked == [["q.c"]]
    for job in jobs:
        watch.remove(job)


async def test_the_rounds_stop_once_no_job_is_watched_and_start_again_for_a_new_one():
    launcher = FakeLauncher({"slurm:1": RUNNING, "slurm:2": RUNNING})
    central = Statuses({"p.a": "running", "p.b": "running"})
    watch = Watch(CancelRequests(), interval=0.001, central_interval=0)
    first = watched("p.a", "slurm:1", launcher, central)
    watch.add(first)
    await observe(first)
    watch.remove(first)
    await eventually(lambda: watch._task.done(), "the rounds to stop")
    asked = len(launcher.asked)
    second = watched("p.b", "slurm:2", launcher, central)
    watch.add(second)
    assert await observe(second) == [Observation(RUNNING, False, "running", True)]
    assert launcher.asked[asked:][0] == ["slurm:2"]  # the removed job is no longer asked about
    watch.remove(second)


async def test_a_job_whose_state_the_backend_omits_is_observed_without_one():
    job = watched("p.a", "slurm:404", FakeLauncher({}), Statuses({"p.a": "running"}))
    watch = Watch(CancelRequests(), interval=3600, central_interval=3600)
    watch.add(job)
    assert (await observe(job))[0].infrastructure is None
    watch.remove(job)
