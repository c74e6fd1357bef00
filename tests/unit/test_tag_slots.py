"""Tag concurrency limits applied to jobs (`TagSlots`) against a fake of Prefect's global concurrency limits:
which limits count, how long their list is trusted, slots taken under a lease, full and paused limits, renewal and
release."""

from __future__ import annotations

from uuid import UUID

import anyio
import anyio.lowlevel
import httpx
import pytest

from dendro_prefect.workers import concurrency
from dendro_prefect.workers.concurrency import LEASE_SEC, SlotsTaken, TagSlots
from tests.unit.fakes import FakeClock, FakeLimits, Limit, eventually, flow_run, http_error

pytestmark = pytest.mark.anyio

TAGS = ["app:letter_count", "processor:letter_count", "project:p1"]


def run_with(tags: list[str]):
    return flow_run("p1.j", None).model_copy(update={"tags": tags})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_a_job_none_of_whose_tags_is_limited_takes_no_slot(clock):
    limits = FakeLimits(Limit("tag:app:other", 1), Limit("app:letter_count", 1))  # the latter is no tag limit
    assert await TagSlots(limits, clock).acquire(run_with(TAGS)) is None
    assert limits.increments == []


async def test_a_job_takes_one_slot_of_each_of_its_limited_tags_under_a_lease_held_by_its_run(clock):
    limits = FakeLimits(Limit("tag:project:p1", 5), Limit("tag:app:letter_count", 2))
    run = run_with(TAGS)
    lease = await TagSlots(limits, clock).acquire(run)
    assert isinstance(lease, UUID) and limits.leases[lease] == ["tag:app:letter_count", "tag:project:p1"]
    (increment,) = limits.increments
    assert increment["slots"] == 1 and increment["mode"] == "concurrency" and increment["lease_duration"] == LEASE_SEC
    assert increment["holder"].type == "flow_run" and increment["holder"].id == run.id


async def test_an_inactive_limit_does_not_count(clock):
    limits = FakeLimits(Limit("tag:app:letter_count", 0, active=False))
    assert await TagSlots(limits, clock).acquire(run_with(TAGS)) is None


async def test_the_limits_are_read_once_for_launches_within_a_few_seconds_and_again_after(clock):
    limits = FakeLimits(Limit("tag:app:letter_count", 10))
    slots = TagSlots(limits, clock)
    await slots.acquire(run_with(TAGS))
    clock.advance(concurrency.LIMITS_MAX_AGE_SEC)
    await slots.acquire(run_with(TAGS))
    assert limits.reads == 1
    limits.limits["tag:project:p1"] = Limit("tag:project:p1", 10)  # a limit created meanwhile
    clock.advance(0.1)
    lease = await slots.acquire(run_with(TAGS))
    assert limits.reads == 2 and limits.leases[lease] == ["tag:app:letter_count", "tag:project:p1"]


async def test_runs_handed_out_at_once_share_one_read_of_the_limits(clock):
    class SlowLimits(FakeLimits):
        async def read_global_concurrency_limits(self, limit: int = 10, offset: int = 0):
            await anyio.lowlevel.checkpoint()  # the others arrive while this read is in flight
            return await super().read_global_concurrency_limits(limit, offset)

    limits = SlowLimits(Limit("tag:app:letter_count", 100))
    slots = TagSlots(limits, clock)
    async with anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(slots.acquire, run_with(TAGS))
    assert limits.reads == 1 and len(limits.increments) == 50


async def test_many_limits_are_read_page_by_page(clock, monkeypatch):
    monkeypatch.setattr(concurrency, "LIMITS_PAGE", 4)
    limits = FakeLimits(*(Limit(f"tag:project:p{i}", 1) for i in range(9)))
    lease = await TagSlots(limits, clock).acquire(run_with(["project:p8"]))
    assert limits.leases[lease] == ["tag:project:p8"] and limits.reads == 3


async def test_inactive_limits_filling_a_page_do_not_stop_the_reading(clock, monkeypatch):
    monkeypatch.setattr(concurrency, "LIMITS_PAGE", 4)
    limits = FakeLimits(*(Limit(f"tag:old:{i}", 1, active=False) for i in range(4)), Limit("tag:project:p1", 1))
    original = limits.read_global_concurrency_limits

    async def bounded(limit, offset):
        assert limits.reads < 10, "the limits were read over and over"
        return await original(limit=limit, offset=offset)

    limits.read_global_concurrency_limits = bounded
    assert await TagSlots(limits, clock).acquire(run_with(["project:p1"])) is not None
    assert limits.reads == 2


async def test_a_full_limit_sends_the_job_back_with_prefects_retry_after(clock):
    limits = FakeLimits(Limit("tag:app:letter_count", 1, taken=1))
    with pytest.raises(SlotsTaken, match="^concurrency limit app:letter_count is full$") as taken:
        await TagSlots(limits, clock).acquire(run_with(TAGS))
    assert taken.value.retry_after == 7.5


async def test_a_limit_of_zero_pauses_the_app(clock):
    limits = FakeLimits(Limit("tag:app:letter_count", 0), Limit("tag:project:p1", 3))
    with pytest.raises(SlotsTaken, match="concurrency limit app:letter_count, project:p1 is full") as taken:
        await TagSlots(limits, clock).acquire(run_with(TAGS))
    assert taken.value.retry_after == 10.0  # no Retry-After: ten seconds


@pytest.mark.parametrize("error", [http_error(500), httpx.ConnectError("connection refused")], ids=["500", "refused"])
async def test_another_failure_to_take_a_slot_is_raised(clock, error):
    limits = FakeLimits(Limit("tag:app:letter_count", 1))
    limits.fail_with = error
    with pytest.raises(type(error)):
        await TagSlots(limits, clock).acquire(run_with(TAGS))


@pytest.mark.parametrize("error", [http_error(423, {"Retry-After": "5"}), http_error(500),
                                   httpx.ConnectError("connection refused")], ids=["full", "500", "refused"])
async def test_a_job_that_runs_already_goes_on_without_a_slot_when_it_cannot_have_one(clock, error):
    limits = FakeLimits(Limit("tag:app:letter_count", 1))
    limits.fail_with = error
    assert await TagSlots(limits, clock).acquire(run_with(TAGS), wait=False) is None


async def test_the_slots_are_given_back_when_the_job_ends_even_by_an_error(clock):
    limits = FakeLimits(Limit("tag:app:letter_count", 1))
    slots = TagSlots(limits, clock)
    lease = await slots.acquire(run_with(TAGS))
    with pytest.RaisesGroup(RuntimeError):  # the renewals' task group wraps the error in an exception group
        async with slots.held(lease):
            assert limits.limits["tag:app:letter_count"].taken == 1
            raise RuntimeError("the job's follow-up failed")
    assert limits.released == [lease] and limits.limits["tag:app:letter_count"].taken == 0


async def test_the_lease_is_renewed_while_the_job_runs(clock, monkeypatch):
    monkeypatch.setattr(concurrency, "RENEW_EVERY_SEC", 0.001)
    limits = FakeLimits(Limit("tag:app:letter_count", 1))
    slots = TagSlots(limits, clock)
    lease = await slots.acquire(run_with(TAGS))
    async with slots.held(lease):
        await eventually(lambda: len(limits.renewed) >= 2, "two renewals")
    assert set(limits.renewed) == {(lease, LEASE_SEC)} and limits.released == [lease]


async def test_a_renewal_or_release_prefect_refuses_does_not_end_the_job(clock, monkeypatch):
    monkeypatch.setattr(concurrency, "RENEW_EVERY_SEC", 0.001)
    limits = FakeLimits(Limit("tag:app:letter_count", 1))
    slots = TagSlots(limits, clock)
    lease = await slots.acquire(run_with(TAGS))
    attempts = []

    async def refused(*args):
        attempts.append(args)
        raise http_error(404)

    limits.renew_concurrency_lease = refused
    limits.release_concurrency_slots_with_lease = refused
    async with slots.held(lease):
        await eventually(lambda: len(attempts) >= 2, "renewals despite refusals")
    assert (lease,) in attempts  # the release was tried


async def test_no_lease_means_nothing_to_renew_or_release(clock):
    limits = FakeLimits()
    async with TagSlots(limits, clock).held(None):
        pass
    assert limits.renewed == [] and limits.released == []
