"""The controller's reconciliation, row by row of the README's table, against an in-memory central and Prefect
client and the Reconciler's own clock: what the central says × what Prefect says × whether `settle_sec` passed."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace
from uuid import uuid4

import httpx
import pytest
from prefect.client.schemas.objects import StateType

from dendro_prefect.apps import AppCatalog
from dendro_prefect.config import ComputeResourceConfig
from dendro_prefect.controller import reconcile
from dendro_prefect.controller.job_hints import SUBSCRIBED, JobHints
from dendro_prefect.controller.reconcile import Reconciler, active_runs, latest_runs, requeue_crashed, why_run_ended
from dendro_prefect.controller.rounds import ComputeResourceController
from dendro_prefect.controller.routing import DEFAULT_DEPLOYMENTS
from dendro_prefect.protocol.client import CentralError
from dendro_prefect.protocol.models import ComputeResourceApp, DendroJob, PubsubMessage, PubsubSubscription, parse
from tests.conftest import LETTER_COUNT_APP
from tests.unit.fakes import (
    RESOURCE_ID,
    RESOURCE_KEY,
    FakeCentral,
    FakeClock,
    FakePrefect,
    flow_run,
    job,
    state,
)

pytestmark = pytest.mark.anyio

SETTLE = 30.0
JOB = "p1.abcdefgh"
ENDED = [StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED]
WORKER_SETTLES = [StateType.PENDING, StateType.RUNNING, StateType.PAUSED]  # a worker follows such a run


async def decide(reconciler: Reconciler, prefect: FakePrefect, central: list[dict]) -> reconcile.Actions:
    """One round's decision, from the central's unfinished jobs and Prefect's active runs, as the controller asks."""
    jobs = [parse(DendroJob, document, "job") for document in central]
    active = await active_runs(prefect, RESOURCE_ID)
    return await reconciler.decide(prefect, {j.jobId for j in jobs}, jobs, active)


def cancelled(actions: reconcile.Actions) -> list[tuple[str, str]]:
    return [(reconcile.job_id_of(run), reason) for run, reason in actions.cancel]


def failed(actions: reconcile.Actions) -> list[tuple[str, str]]:
    return [(j.jobId, reason) for j, reason in actions.fail]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def reconciler(clock) -> Reconciler:
    return Reconciler(RESOURCE_ID, settle_sec=SETTLE, clock=clock)


# --- the central no longer lists the job (deleted, failed or finished) --------------------------------------------


async def test_a_run_waiting_for_a_worker_of_a_job_gone_from_the_central_is_cancelled_at_once(reconciler):
    prefect = FakePrefect([flow_run(JOB, StateType.SCHEDULED)])
    assert cancelled(await decide(reconciler, prefect, [])) == [(JOB, f"job {JOB} is no longer unfinished at the "
                                                                      "central")]


@pytest.mark.parametrize("kind", WORKER_SETTLES)
async def test_a_followed_run_of_a_job_gone_from_the_central_is_left_to_its_worker_for_settle_sec(reconciler, clock,
                                                                                                 kind):
    prefect = FakePrefect([flow_run(JOB, kind)])
    assert cancelled(await decide(reconciler, prefect, [])) == []
    clock.advance(SETTLE - 0.1)
    assert cancelled(await decide(reconciler, prefect, [])) == []
    clock.advance(0.1)
    assert cancelled(await decide(reconciler, prefect, [])) == [(JOB, f"job {JOB} is no longer unfinished at the "
                                                                      "central")]


async def test_a_run_already_cancelling_is_never_cancelled_again(reconciler, clock):
    prefect = FakePrefect([flow_run(JOB, StateType.CANCELLING)])
    for _ in range(3):
        assert (await decide(reconciler, prefect, [])).cancel == []
        clock.advance(SETTLE)


@pytest.mark.parametrize("kind", ENDED)
async def test_an_ended_run_of_a_job_gone_from_the_central_needs_nothing(reconciler, clock, kind):
    prefect = FakePrefect([flow_run(JOB, kind)])
    await decide(reconciler, prefect, [])
    clock.advance(SETTLE)
    actions = await decide(reconciler, prefect, [])
    assert actions.cancel == [] and actions.fail == []


async def test_runs_of_other_compute_resources_are_not_ours_to_cancel(reconciler):
    prefect = FakePrefect([flow_run(JOB, StateType.SCHEDULED, resource_id="d" * 64)])
    assert (await decide(reconciler, prefect, [])).cancel == []


# --- the central says starting or running ---------------------------------------------------------------------


@pytest.mark.parametrize("status", ["starting", "running"])
@pytest.mark.parametrize("kind", [StateType.SCHEDULED, *WORKER_SETTLES, StateType.CANCELLING])
async def test_a_launched_job_whose_run_is_active_needs_nothing(reconciler, clock, status, kind):
    prefect = FakePrefect([flow_run(JOB, kind)])
    for _ in range(2):
        actions = await decide(reconciler, prefect, [job(JOB, status=status)])
        assert actions.cancel == [] and actions.fail == []
        clock.advance(SETTLE)


@pytest.mark.parametrize("status", ["starting", "running"])
@pytest.mark.parametrize("kind, message, reason", [
    (StateType.CANCELLED, "Cancelled by a user", "its flow run {name} was cancelled in Prefect"),
    (StateType.CRASHED, "Worker lost", "its flow run {name} ended Crashed in Prefect: Worker lost"),
    (StateType.FAILED, None, "its flow run {name} ended Failed in Prefect"),
    (StateType.COMPLETED, None, "its flow run {name} ended Completed in Prefect"),
])
async def test_a_launched_job_whose_run_ended_is_failed_with_the_runs_reason_after_settle_sec(
        reconciler, clock, status, kind, message, reason):
    run = flow_run(JOB, kind, message=message)
    prefect = FakePrefect([run])
    central = [job(JOB, status=status)]
    assert failed(await decide(reconciler, prefect, central)) == []
    clock.advance(SETTLE - 0.1)
    assert failed(await decide(reconciler, prefect, central)) == []
    clock.advance(0.1)
    assert failed(await decide(reconciler, prefect, central)) == [(JOB, reason.format(name=run.name))]


async def test_a_launched_job_whose_run_was_deleted_is_failed_after_settle_sec(reconciler, clock):
    prefect = FakePrefect()
    prefect.delete(prefect.add(flow_run(JOB, StateType.RUNNING)))
    central = [job(JOB, status="running")]
    assert failed(await decide(reconciler, prefect, central)) == []
    clock.advance(SETTLE)
    actions = await decide(reconciler, prefect, central)
    assert failed(actions) == [(JOB, "its flow run was deleted in Prefect")] and actions.outside == []


@pytest.mark.parametrize("status", ["starting", "running"])
async def test_a_launched_job_this_prefect_never_ran_is_left_to_finish_and_said_once(reconciler, clock, status):
    """Launched by the original daemon before the switch (or before the Prefect database was replaced)."""
    prefect = FakePrefect([flow_run("p1.other", StateType.RUNNING)])
    central = [job(JOB, status=status)]
    first = await decide(reconciler, prefect, central)
    assert [j.jobId for j in first.outside] == [JOB] and failed(first) == []
    clock.advance(10 * SETTLE)
    again = await decide(reconciler, prefect, central)
    assert again.outside == [] and failed(again) == [] and reconciler.outside == {JOB}
    assert prefect.event_reads == 1  # asked once per job, not every round
    await decide(reconciler, prefect, [])  # it ended at the central
    assert reconciler.outside == set()


async def test_the_newest_run_of_a_job_says_how_it_ended(reconciler, clock):
    older, newer = flow_run(JOB, StateType.COMPLETED, name="old"), flow_run(JOB, StateType.CANCELLED, name="new")
    prefect = FakePrefect([older, newer])
    await decide(reconciler, prefect, [job(JOB, status="running")])
    clock.advance(SETTLE)
    assert failed(await decide(reconciler, prefect, [job(JOB, status="running")])) == [
        (JOB, "its flow run new was cancelled in Prefect")]


# --- the central says pending: the controller's own rows, not the reconciler's -------------------------------------


@pytest.mark.parametrize("kind", [None, StateType.SCHEDULED, StateType.RUNNING, *ENDED])
async def test_a_pending_job_is_never_the_reconcilers_to_cancel_or_fail(reconciler, clock, kind):
    prefect = FakePrefect([flow_run(JOB, kind)] if kind else [])
    for _ in range(2):
        actions = await decide(reconciler, prefect, [job(JOB, status="pending")])
        assert actions.cancel == [] and actions.fail == []
        clock.advance(SETTLE)


# --- the clock ------------------------------------------------------------------------------------------------------


async def test_a_disagreement_that_went_away_starts_from_zero_when_it_comes_back(reconciler, clock):
    prefect = FakePrefect([flow_run(JOB, StateType.CANCELLED)])
    launched = [job(JOB, status="running")]
    await decide(reconciler, prefect, launched)
    clock.advance(SETTLE - 1)
    await decide(reconciler, prefect, [])  # the job left the central meanwhile: nothing to settle
    clock.advance(2)
    assert failed(await decide(reconciler, prefect, launched)) == []  # seen again: a new disagreement
    clock.advance(SETTLE)
    assert failed(await decide(reconciler, prefect, launched)) != []


async def test_each_jobs_disagreement_has_its_own_clock(reconciler, clock):
    prefect = FakePrefect([flow_run("p1.first", StateType.RUNNING)])
    await decide(reconciler, prefect, [])
    clock.advance(SETTLE / 2)
    prefect.add(flow_run("p1.second", StateType.RUNNING))
    await decide(reconciler, prefect, [])
    clock.advance(SETTLE / 2)
    assert [job_id for job_id, _ in cancelled(await decide(reconciler, prefect, []))] == ["p1.first"]
    clock.advance(SETTLE / 2)
    assert sorted(job_id for job_id, _ in cancelled(await decide(reconciler, prefect, []))) == ["p1.first",
                                                                                                "p1.second"]


async def test_the_reconciler_clock_is_monotonic_time_by_default():
    assert Reconciler(RESOURCE_ID).clock is reconcile.time.monotonic and Reconciler(RESOURCE_ID).settle_sec == 30.0


# --- Prefect's side -------------------------------------------------------------------------------------------------


async def test_runs_are_read_page_by_page(monkeypatch):
    monkeypatch.setattr(reconcile, "PAGE", 3)
    prefect = FakePrefect([flow_run(f"p1.j{i}", StateType.RUNNING) for i in range(7)])
    assert sorted(await active_runs(prefect, RESOURCE_ID)) == [f"p1.j{i}" for i in range(7)]
    assert prefect.read_calls == 3  # 3 + 3 + 1 runs
    prefect.read_calls = 0
    assert sorted(await latest_runs(prefect, [f"p1.j{i}" for i in range(7)])) == [f"p1.j{i}" for i in range(7)]
    assert prefect.read_calls == 5  # tags 3 at a time; a full page of runs asks for one more: 2 + 2 + 1


@pytest.mark.parametrize("kind, ends_as", [(StateType.RUNNING, StateType.CANCELLING),
                                            (StateType.PENDING, StateType.CANCELLING),
                                            (StateType.SCHEDULED, StateType.CANCELLED)])
async def test_a_cancel_proposes_cancelling_with_the_reason_and_a_run_no_worker_took_is_cancelled_at_once(
        reconciler, kind, ends_as):
    run = flow_run(JOB, kind)
    prefect = FakePrefect([run])
    await reconciler.cancel(prefect, run, "job gone")
    assert prefect.state_of(run).type == ends_as
    assert prefect.state_of(run).message == "Cancelled by the controller: job gone"


@pytest.mark.parametrize("crashes, requeued", [(1, True), (3, True), (4, False)])
async def test_a_run_that_crashed_before_its_launch_goes_back_to_the_queue_up_to_three_times(crashes, requeued):
    run = flow_run(JOB, StateType.CRASHED, message="database is locked")
    prefect = FakePrefect()
    prefect.add(run, earlier=[state(StateType.CRASHED)] * (crashes - 1))
    assert await requeue_crashed(prefect, run) is requeued
    if requeued:
        assert prefect.state_of(run).type == StateType.SCHEDULED
        assert prefect.state_of(run).message == f"Requeued after a crash before its launch ({crashes} of 3)"
    else:
        assert prefect.state_of(run).type == StateType.CRASHED


@pytest.mark.parametrize("kind", [StateType.CANCELLED, StateType.FAILED, StateType.COMPLETED])
async def test_only_a_crashed_run_is_requeued(kind):
    run = flow_run(JOB, kind)
    assert await requeue_crashed(FakePrefect([run]), run) is False


def test_why_a_run_ended_names_the_run_its_state_and_message():
    assert why_run_ended(None) == "its flow run was deleted in Prefect"
    assert why_run_ended(flow_run(JOB, None, name="r")) == "its flow run r was cancelled in Prefect"
    assert why_run_ended(flow_run(JOB, StateType.FAILED, message="boom", name="r")) == (
        "its flow run r ended Failed in Prefect: boom")


# --- the controller's rows: a pending job -------------------------------------------------------------------------


@pytest.fixture
def central() -> FakeCentral:
    return FakeCentral()


@pytest.fixture
def prefect() -> FakePrefect:
    client = FakePrefect()
    for deployment in DEFAULT_DEPLOYMENTS.values():
        client.deployments[deployment] = uuid4()
    return client


@pytest.fixture
def controller(central, clock) -> ComputeResourceController:
    config = ComputeResourceConfig(compute_resource_id=RESOURCE_ID, compute_resource_private_key=RESOURCE_KEY,
                                   central_url="http://central.invalid")
    controller = ComputeResourceController(config, dict(DEFAULT_DEPLOYMENTS), logging.getLogger("tests.controller"),
                                           settle_sec=SETTLE)
    controller.central = controller.jobs.client = central
    controller.reconciler.clock = clock
    controller.catalog = AppCatalog.load([ComputeResourceApp(name="letter_count",
                                                             specUri=(LETTER_COUNT_APP / "spec.json").as_uri())])
    return controller


async def test_a_pending_job_without_run_gets_one_flow_run_of_its_run_methods_deployment(controller, central, prefect):
    central.jobs[JOB] = job(JOB)
    assert await controller.intake(prefect) == 1
    (run,) = prefect.created
    assert run.deployment_id == prefect.deployments["dendro-job/slurm"] and run.idempotency_key == JOB
    assert run.parameters == {"job_id": JOB} and run.name == f"letter_count/letter_count {JOB}"
    assert f"job:{JOB}" in run.tags and f"resource:{RESOURCE_ID}" in run.tags
    assert run.job_variables["num_cpus"] == 1 and "jobPrivateKey" not in str(run.job_variables)
    assert await controller.intake(prefect) == 0 and len(prefect.runs) == 1  # its run is active now
    assert central.status_changes == []


async def test_a_job_running_outside_prefect_is_logged_once_and_listed_in_the_heartbeat(controller, central, prefect,
                                                                                        caplog):
    central.jobs[JOB] = job(JOB, status="running")
    caplog.set_level(logging.WARNING, logger="tests.controller")
    for _ in range(3):
        assert await controller.intake(prefect) == 0
    said = [r.getMessage() for r in caplog.records if JOB in r.getMessage()]
    assert said == [f"Job {JOB} is running at the central and this Prefect never had a flow run of it (launched by "
                    "another controller, e.g. the original daemon): left to finish"]
    assert controller.heartbeat(SimpleNamespace(connected=False)).jobs_outside_prefect == [JOB]
    assert central.status_changes == [] and prefect.created == []


async def test_a_deployment_is_read_once_and_again_once_it_was_applied_anew(controller, central, prefect):
    """Its id is kept between rounds (one read per round was one call per job); a deployment deleted and
    applied again has a new id, which the next creation reads."""
    for job_id in (JOB, "p1.bcdefghi"):
        central.jobs[job_id] = job(job_id)
        assert await controller.intake(prefect) == 1
    assert prefect.deployment_reads == 1
    prefect.deployments["dendro-job/slurm"] = applied_anew = uuid4()
    central.jobs["p1.cdefghij"] = job("p1.cdefghij")
    assert await controller.intake(prefect) == 1
    assert prefect.deployment_reads == 2 and prefect.created[-1].deployment_id == applied_anew


async def test_a_rounds_new_runs_are_created_in_bulk_per_deployment_at_most_100_a_call(controller, central, prefect):
    """One call per deployment and hundred jobs (Prefect's limit), not one per job; a restarted controller,
    which sees the same jobs still pending, creates nothing more."""
    slurm = [f"p{i // 10}.{i:08d}" for i in range(150)]
    for job_id in slurm:
        central.jobs[job_id] = job(job_id)
    central.jobs["p9.localjob"] = dict(job("p9.localjob"), runMethod="local")
    assert await controller.intake(prefect) == 151
    assert sorted(prefect.bulk_calls) == [1, 50, 100]
    assert {run.idempotency_key for run in prefect.created} == {*slurm, "p9.localjob"}
    restarted = ComputeResourceController(controller.config, dict(DEFAULT_DEPLOYMENTS), controller.logger,
                                          settle_sec=SETTLE)
    restarted.central, restarted.jobs.client, restarted.catalog = central, central, controller.catalog
    assert await restarted.intake(prefect) == 0  # the jobs are still pending at the central: their runs are waiting
    assert len(prefect.runs) == 151 and len(prefect.bulk_calls) == 3 and central.status_changes == []


async def test_a_run_prefect_refuses_fails_its_job_with_prefects_reason_and_the_others_are_created(
        controller, central, prefect):
    central.jobs[JOB] = job(JOB)
    central.jobs["p1.bcdefghi"] = job("p1.bcdefghi")
    prefect.refused["p1.bcdefghi"] = "Error creating flow run: Validation failed for field 'num_cpus'."
    assert await controller.intake(prefect) == 1
    assert [run.idempotency_key for run in prefect.created] == [JOB]
    assert central.status_changes == [("p1.bcdefghi", "failed", "Prefect refused its flow run: Error creating flow "
                                       "run: Validation failed for field 'num_cpus'.")]


async def test_a_run_prefect_could_not_create_leaves_its_job_pending_for_the_next_round(controller, central, prefect):
    """The server's own error on an item (here SQLite's lock) is not the job's fault."""
    central.jobs[JOB] = job(JOB)
    prefect.refused[JOB] = "(sqlite3.OperationalError) database is locked\n[SQL: INSERT INTO flow_run ...]"
    assert await controller.intake(prefect) == 0
    assert central.status_changes == [] and prefect.created == []
    del prefect.refused[JOB]  # the server is itself again
    assert await controller.intake(prefect) == 1
    assert [run.idempotency_key for run in prefect.created] == [JOB]


class BurstOfHints:
    """JobHints as `Controller._wait` sees them: a message at every wait, `burst` times, then quiet."""

    def __init__(self, burst: int) -> None:
        self.burst = burst

    async def wait(self, timeout: float) -> list:
        if self.burst:
            self.burst -= 1
            return [SimpleNamespace(type="newPendingJob")]
        await asyncio.sleep(timeout)
        return []


async def test_a_waiting_controller_asks_whether_its_run_is_cancelled_every_few_seconds_not_at_every_hint(
        controller, prefect, monkeypatch):
    monkeypatch.setattr("dendro_prefect.controller.rounds.CANCEL_CHECK_SEC", 1.0)
    own = prefect.add(flow_run(JOB, StateType.RUNNING))
    hints = BurstOfHints(burst=50)
    for _ in range(50):  # a burst of hints, each ending a wait (and the round after it) at once
        assert await controller._wait(prefect, hints, time.monotonic() + 10, own.id)
    assert prefect.read_calls == 1
    await prefect.set_flow_run_state(own.id, state(StateType.CANCELLING))
    started = time.monotonic()
    assert await controller._wait(prefect, hints, started + 10, own.id) is None
    assert time.monotonic() - started < 3.0 and prefect.read_calls == 2


class Announcements:
    """JobHints holding `messages` for the first wait, then quiet."""

    def __init__(self, *messages: dict) -> None:
        self.messages = [parse(PubsubMessage, m, "message") for m in messages]

    async def wait(self, timeout: float) -> list:
        messages, self.messages = self.messages, []
        if not messages:
            await asyncio.sleep(timeout)
        return messages


def status_changed(status: str | None) -> dict:
    return {"type": "jobStatusChanged", "projectId": "p1", "computeResourceId": RESOURCE_ID, "jobId": JOB,
            **({"status": status} if status else {})}


async def test_a_subscription_made_or_made_again_starts_a_round_at_once(controller, prefect):
    """What the central published before the subscription was heard by no one: a round catches up."""
    hints = JobHints(PubsubSubscription(pubnubSubscribeKey="sub-c-x", pubnubChannel="c", pubnubUser="u"),
                     lambda document: None)
    hints.subscribed()  # as the pubnub SDK's listener does on PNConnectedCategory and PNReconnectedCategory
    started = time.monotonic()
    assert await controller._wait(prefect, hints, started + 5.0, None) == [SUBSCRIBED]
    assert time.monotonic() - started < 1.0 and hints.connected


@pytest.mark.parametrize("message, ends_the_wait", [
    ({"type": "newPendingJob", "projectId": "p1", "computeResourceId": RESOURCE_ID, "jobId": JOB}, True),
    (status_changed("pending"), True),  # a held job approved
    (status_changed("failed"), True),
    (status_changed(None), True),
    ({"type": "computeResourceAppsChanaged", "computeResourceId": RESOURCE_ID}, True),
    (status_changed("starting"), False),
    (status_changed("running"), False),
    (status_changed("completed"), False),
])
async def test_a_job_progressing_on_its_worker_does_not_start_a_round(controller, prefect, message, ends_the_wait):
    started = time.monotonic()
    messages = await controller._wait(prefect, Announcements(message), started + 1.0, None)
    assert (time.monotonic() - started < 0.8) == ends_the_wait
    assert bool(messages) == ends_the_wait


@pytest.mark.parametrize("kind, message, reason", [
    (StateType.CANCELLED, None, "not launched again: its flow run {name} was cancelled in Prefect"),
    (StateType.COMPLETED, None, "not launched again: its flow run {name} ended Completed in Prefect"),
    (StateType.FAILED, "app failed", "not launched again: its flow run {name} ended Failed in Prefect: app failed"),
])
async def test_a_pending_job_whose_run_already_ended_is_not_launched_again_but_failed(controller, central, prefect,
                                                                                     kind, message, reason):
    central.jobs[JOB] = job(JOB)
    earlier = prefect.add(flow_run(JOB, kind, message=message).model_copy(update={"idempotency_key": JOB}))
    assert await controller.intake(prefect) == 0
    assert central.failures() == {JOB: reason.format(name=earlier.name)}
    assert prefect.state_of(earlier).type == kind


async def test_a_pending_job_whose_run_crashed_before_its_launch_is_queued_again(controller, central, prefect):
    central.jobs[JOB] = job(JOB)
    crashed = prefect.add(flow_run(JOB, StateType.CRASHED, message="database is locked")
                          .model_copy(update={"idempotency_key": JOB}))
    assert await controller.intake(prefect) == 1
    assert prefect.state_of(crashed).type == StateType.SCHEDULED and central.status_changes == []


async def test_a_pending_job_whose_run_crashed_too_often_is_failed(controller, central, prefect):
    central.jobs[JOB] = job(JOB)
    crashed = prefect.add(flow_run(JOB, StateType.CRASHED, message="database is locked")
                          .model_copy(update={"idempotency_key": JOB}), earlier=[state(StateType.CRASHED)] * 3)
    assert await controller.intake(prefect) == 0
    assert central.failures() == {JOB: f"not launched again: its flow run {crashed.name} ended Crashed in Prefect: "
                                       "database is locked"}


@pytest.mark.parametrize("changes, reason", [
    (dict(processorName="ms5"), "no app of this compute resource has processor ms5"),
    (dict(runMethod=None), f"job {JOB} has no runMethod"),
    (dict(runMethod="kubernetes"), "no deployment dendro-job/kubernetes for run method kubernetes"),
    (dict(requiredResources={"numCpus": -1, "numGpus": 0, "memoryGb": 1, "timeSec": 60}),
     "malformed job: requiredResources.numCpus"),
])
async def test_a_job_that_cannot_run_is_failed_with_its_reason_and_gets_no_run(controller, central, prefect, changes,
                                                                              reason):
    del prefect.deployments["dendro-job/kubernetes"]
    central.jobs[JOB] = job(JOB, **changes)
    assert await controller.intake(prefect) == 0
    assert central.failures()[JOB].startswith(reason) and prefect.runs == {}


async def test_a_job_failed_by_the_controller_is_not_failed_again_while_the_central_still_lists_it(controller,
                                                                                                 central, prefect):
    document = job(JOB, processorName="ms5")
    central.jobs[JOB] = document
    await controller.intake(prefect)
    central.jobs[JOB] = document  # a central slow to drop it
    await controller.intake(prefect)
    assert [(job_id, status) for job_id, status, _ in central.status_changes] == [(JOB, "failed")]


async def test_a_failure_the_central_cannot_take_yet_waits_in_the_outbox_and_is_delivered_once(controller, central,
                                                                                              prefect):
    controller.outbox.first_try_sec, controller.outbox.first_delay_sec = 0.0, 0.01
    document = job(JOB, processorName="ms5")
    central.jobs[JOB] = document
    central.status_outage = 2  # the first try, and the outbox's first retry
    await controller.intake(prefect)
    await controller.intake(prefect)  # the central still lists it: not failed a second time
    for _ in range(200):
        if central.failures():
            break
        await asyncio.sleep(0.01)
    assert central.failures() == {JOB: "no app of this compute resource has processor ms5"}
    assert not controller.outbox.pending()


# --- the controller's rows: the reconciler's decisions carried out -------------------------------------------------


async def test_the_controller_cancels_the_waiting_run_of_a_deleted_job_at_once(controller, prefect):
    run = prefect.add(flow_run(JOB, StateType.SCHEDULED))
    await controller.intake(prefect)
    assert prefect.state_of(run).type == StateType.CANCELLED  # no worker took it: nothing to kill


async def test_the_controller_cancels_a_deleted_jobs_running_run_no_worker_stopped_after_settle_sec(controller, prefect,
                                                                                                  clock, central):
    run = prefect.add(flow_run(JOB, StateType.RUNNING))
    others = [prefect.add(flow_run(f"p1.gone{n}", StateType.RUNNING)) for n in range(3)]
    await controller.intake(prefect)
    assert prefect.state_of(run).type == StateType.RUNNING
    assert central.reads == 1  # one read a round, however many runs' jobs it leaves out
    assert all(prefect.state_of(other).type == StateType.RUNNING for other in others)
    clock.advance(SETTLE)
    await controller.intake(prefect)
    assert prefect.state_of(run).type == StateType.CANCELLING


async def test_the_controller_fails_a_running_job_whose_run_was_cancelled_after_settle_sec(controller, central,
                                                                                          prefect, clock):
    central.jobs[JOB] = job(JOB, status="running")
    run = prefect.add(flow_run(JOB, StateType.CANCELLED))
    await controller.intake(prefect)
    assert central.status_changes == []
    clock.advance(SETTLE)
    await controller.intake(prefect)
    assert central.failures() == {JOB: f"its flow run {run.name} was cancelled in Prefect"}


# --- the controller's rounds ----------------------------------------------------------------------------------------


async def test_the_apps_are_loaded_and_reported_with_the_resources_run_methods_skipping_broken_ones(controller,
                                                                                                   central, caplog):
    central.apps = [ComputeResourceApp(name="letter_count", specUri=(LETTER_COUNT_APP / "spec.json").as_uri()),
                    ComputeResourceApp(name="ftp", specUri="ftp://example/spec.json")]
    await controller.load_apps()
    (spec,) = central.specs
    assert [app.name for app in spec.apps] == ["letter_count"]
    assert spec.defaultJobRunMethod == "local" and spec.availableJobRunMethods == ["local"]
    assert "App ftp skipped: spec URI ftp://example/spec.json is neither file:// nor http(s)://" in caplog.text
    assert controller.last_contact is not None


async def test_a_round_with_the_central_unreachable_is_retried_next_round_and_says_why(controller, central, prefect):
    central.fail_with = CentralError("GET unfinished_jobs: connection refused", transient=True)
    assert await controller._round(prefect, load_apps=False) is False
    assert controller.last_error == "central unreachable: GET unfinished_jobs: connection refused"
    assert controller.heartbeat(SimpleNamespace(connected=False)).last_error == controller.last_error
    central.fail_with = None
    central.jobs[JOB] = job(JOB)
    await controller._round(prefect, load_apps=False)
    assert controller.jobs_submitted == 1 and controller.last_intake is not None


async def test_apps_whose_loading_failed_are_loaded_again_next_round(controller, central, prefect):
    central.fail_with = CentralError("GET apps: 503", transient=True)
    assert await controller._round(prefect, load_apps=True) is True
    central.fail_with = None
    assert await controller._round(prefect, load_apps=True) is False
    assert len(central.specs) == 1


async def test_a_failure_of_prefects_api_in_a_round_is_recorded_not_raised(controller, central, prefect):
    async def restarting(**_):
        raise httpx.ConnectError("All connection attempts failed")

    prefect.read_flow_runs = restarting
    await controller._round(prefect, load_apps=False)
    assert controller.last_error == "intake round failed: ConnectError: All connection attempts failed"
