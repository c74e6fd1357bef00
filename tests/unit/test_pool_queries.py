"""A worker's queries of its pool take turns (workers/pickup.py `OneQueryAtATime`), so the pool's
concurrency limit holds whatever the timing: no server, a model of Prefect's query instead.

The model is Prefect's server as it answers a worker on PostgreSQL: a query hands out as many Scheduled
runs as the limit less the Pending and Running ones, skipping (and not counting) runs whose state change
is in flight (`FOR UPDATE SKIP LOCKED`). The worker is the real one (`LocalWorker`: BaseWorker's
submission with our hooks), queried by two callers at once as the event pickup and Prefect's loop do,
the interleaving drawn from a seeded random generator (no clock, no sleeps)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from uuid import uuid4

import anyio
import anyio.lowlevel
import prefect.workers.base as prefect_worker_module
import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import Abort
from prefect.settings import PREFECT_API_DEFAULT_LIMIT, PREFECT_LOGGING_TO_API_ENABLED, temporary_settings
from prefect.states import Pending
from prefect.workers.base import BaseWorker

from dendro_prefect.workers.local import LocalWorker
from dendro_prefect.workers.pickup import END_EVENTS, OneQueryAtATime, ScheduledRunPickup

LIMIT = 2
RUNS = 12
SEEDS = range(40)


@dataclass
class Response:  # what BaseWorker reads of Prefect's WorkerFlowRunResponse
    flow_run: FlowRun


class PoolServer:
    """Prefect's server for one pool, as the worker's query and state proposals see it."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.runs = [FlowRun(id=uuid4(), flow_id=uuid4(), name=f"run-{i}") for i in range(RUNS)]
        self.state = {run.id: "SCHEDULED" for run in self.runs}
        self.locked: set = set()  # runs whose state change is in flight
        self.most_running = 0

    async def pause(self) -> None:
        for _ in range(self.rng.randrange(4)):
            await anyio.lowlevel.checkpoint()

    def running(self) -> int:
        return sum(state in ("PENDING", "RUNNING") for state in self.state.values())

    async def query(self) -> list[Response]:
        await self.pause()
        free = LIMIT - self.running()
        handed_out = [run for run in self.runs if self.state[run.id] == "SCHEDULED" and run.id not in self.locked]
        await self.pause()
        return [Response(run) for run in handed_out[:max(0, free)]]

    async def propose_pending(self, client, state, flow_run_id):
        self.locked.add(flow_run_id)
        await self.pause()
        self.locked.discard(flow_run_id)
        self.state[flow_run_id] = "PENDING"
        self.most_running = max(self.most_running, self.running())
        return Pending()

    async def run_job(self, flow_run: FlowRun, task_status) -> None:
        """The launch, the job, its end: Running, then Completed, which frees the slot."""
        self.state[flow_run.id] = "RUNNING"
        task_status.started("process:1")
        await self.pause()
        self.state[flow_run.id] = "COMPLETED"

    def all_done(self) -> bool:
        return all(state == "COMPLETED" for state in self.state.values())


class Client:
    async def update_flow_run(self, flow_run_id, **kwargs) -> None:
        pass


def most_running(seed: int, gated: bool, monkeypatch) -> int:
    """The most runs Pending or Running at once while two callers query the pool until every run ended."""
    server = PoolServer(random.Random(seed))
    monkeypatch.setattr(prefect_worker_module, "propose_state", server.propose_pending)
    worker = LocalWorker(work_pool_name="pool")
    worker._client = Client()
    worker._has_successfully_synced = True
    worker._get_scheduled_flow_runs = server.query
    worker._submit_run_and_capture_errors = server.run_job
    worker._orphans_checked_at = float("inf")  # the loop's look for orphans is not modelled
    query = worker._query_pool if gated else lambda: BaseWorker.get_and_submit_flow_runs(worker)
    loop_query = worker.get_and_submit_flow_runs if gated else query

    async def caller(query) -> None:
        while not server.all_done():
            await query()
            await server.pause()
            await anyio.lowlevel.checkpoint()

    async def scenario() -> None:
        async with anyio.create_task_group() as runs:
            worker._runs_task_group = runs
            with anyio.fail_after(10):
                async with anyio.create_task_group() as callers:
                    callers.start_soon(caller, query)  # the event pickup
                    callers.start_soon(caller, loop_query)  # Prefect's query loop

    with temporary_settings({PREFECT_LOGGING_TO_API_ENABLED: False}):
        anyio.run(scenario)
    return server.most_running


def test_queries_that_take_turns_never_exceed_the_pool_limit(monkeypatch):
    most = [most_running(seed, True, monkeypatch) for seed in SEEDS]
    assert max(most) == LIMIT, most


def test_the_model_exceeds_the_limit_when_queries_overlap(monkeypatch):
    """Without the turns, the same model starts more than the limit: it reproduces the race."""
    assert max(most_running(seed, False, monkeypatch) for seed in SEEDS) > LIMIT


def test_a_run_settled_before_its_query_returns_does_not_hold_up_the_next_query():
    queries = OneQueryAtATime()
    run = FlowRun(id=uuid4(), flow_id=uuid4(), name="refused at once")

    async def hands_out_a_run_refused_at_once() -> list:
        queries.settled(run.id)
        return [run]

    async def hands_out_nothing() -> list:
        return []

    async def scenario() -> None:
        with anyio.fail_after(5):
            assert await queries.query(hands_out_a_run_refused_at_once, set) == [run]
            assert await queries.query(hands_out_nothing, set) == []

    anyio.run(scenario)


@pytest.mark.parametrize("outcome", ["refused", "error"])
def test_a_proposal_that_fails_still_settles_its_run(monkeypatch, outcome):
    async def propose(client, state, flow_run_id):
        if outcome == "error":
            raise RuntimeError("the API is down")
        raise Abort("not now")

    monkeypatch.setattr(prefect_worker_module, "propose_state", propose)
    worker = LocalWorker(work_pool_name="pool")
    worker._client = Client()
    run = FlowRun(id=uuid4(), flow_id=uuid4(), name="refused")

    async def scenario():
        with temporary_settings({PREFECT_LOGGING_TO_API_ENABLED: False}):
            assert await worker._propose_pending_state(run) is False

    anyio.run(scenario)
    assert run.id in worker._queries._settled


def test_an_ended_run_wakes_the_pickup_only_where_the_pool_has_a_limit():
    """A scheduled run always wakes the pickup; a run that ended frees a slot only under a pool limit."""
    limit: list[int | None] = [None]
    pickup = ScheduledRunPickup(uuid4(), lambda: None, logging.getLogger("test"), lambda: limit[0] is not None)
    assert pickup.wakes("prefect.flow-run.Scheduled")
    assert not any(pickup.wakes(name) for name in END_EVENTS)
    limit[0] = 2  # set by an admin while the worker runs
    assert all(pickup.wakes(name) for name in END_EVENTS)


def test_a_query_that_handed_out_a_full_page_queries_again_at_once():
    """Runs created in bulk wake the pickup once; it goes on a page at a time until a page is not full."""
    page_size = PREFECT_API_DEFAULT_LIMIT.value()
    pages = [[object()] * page_size, [object()] * page_size, [object()]]
    queried = []
    drained = anyio.Event()

    async def pick_up():
        queried.append(len(pages[0]))
        page = pages.pop(0)
        if not pages:
            drained.set()
        return page

    async def main():
        pickup = ScheduledRunPickup(uuid4(), pick_up, logging.getLogger("test"), lambda: False)
        async with anyio.create_task_group() as group:
            group.start_soon(pickup._pick_up_on_wake)
            pickup._wake.set()  # one event
            with anyio.fail_after(5):
                await drained.wait()
            await anyio.lowlevel.checkpoint()
            group.cancel_scope.cancel()

    anyio.run(main)
    assert queried == [page_size, page_size, 1]
