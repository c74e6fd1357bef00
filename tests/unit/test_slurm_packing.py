"""Which jobs share an allocation (`BatchPacker`): jobs of one batch asking for the same resources, arriving
within the window, at most `max_jobs` of them; everything else goes into a pack of its own."""

from __future__ import annotations

import asyncio

import pytest

from dendro_prefect.workers.launch import LaunchError
from dendro_prefect.workers.slurm.job_dir import SlurmJobDirectory
from dendro_prefect.workers.slurm.packing import BatchPacker, pack_key
from tests.unit.fakes import launch_request

pytestmark = pytest.mark.anyio


class Submissions:
    """The packs submitted, each a Slurm job id from 100 on."""

    def __init__(self, error: Exception | None = None) -> None:
        self.packs: list[tuple[str, list[str]]] = []  # (batch id, job ids)
        self.error = error

    async def __call__(self, batch_id, jobs) -> str:
        self.packs.append((batch_id, [request.job_id for request, _ in jobs]))
        if self.error is not None:
            raise self.error
        return str(99 + len(self.packs))


def job(tmp_path, name: str, **changes):
    changes.setdefault("batch_id", "b1")
    request = launch_request(tmp_path, job_id=name, job_dir=tmp_path / name, **changes)
    return request, SlurmJobDirectory(request.job_dir)


async def add_all(packer: BatchPacker, *jobs) -> list[str]:
    return list(await asyncio.wait_for(asyncio.gather(*(packer.add(*j) for j in jobs)), timeout=5))


async def test_jobs_of_one_batch_with_the_same_resources_share_one_pack(tmp_path):
    submit = Submissions()
    packer = BatchPacker(submit, window_sec=0.01, max_jobs=16)
    assert await add_all(packer, job(tmp_path, "a"), job(tmp_path, "b"), job(tmp_path, "c")) == ["100"] * 3
    assert submit.packs == [("b1", ["a", "b", "c"])]


@pytest.mark.parametrize("change", [
    dict(batch_id="b2"), dict(num_cpus=8), dict(memory_gb=64.0), dict(time_limit_sec=60.0), dict(time_limit_sec=None),
], ids=["other batch", "other cpus", "other memory", "other time limit", "no time limit"])
async def test_a_job_that_differs_in_batch_or_resources_gets_a_pack_of_its_own(tmp_path, change):
    submit = Submissions()
    packer = BatchPacker(submit, window_sec=0.01, max_jobs=16)
    ids = await add_all(packer, job(tmp_path, "a"), job(tmp_path, "b", **change), job(tmp_path, "c"))
    assert ids[0] == ids[2] != ids[1]
    assert sorted(jobs for _, jobs in submit.packs) == [["a", "c"], ["b"]]


def test_gpus_and_the_job_itself_are_not_part_of_the_pack_key(tmp_path):
    """GPU jobs never reach the packer (the launcher runs them alone); the key is the batch and resources."""
    first, _ = job(tmp_path, "a")
    second, _ = job(tmp_path, "b", app_name="other", env={}, num_gpus=1)
    assert pack_key(first) == pack_key(second) == ("b1", 2, 4.0, 3600.0)


async def test_a_full_pack_is_submitted_at_once_without_waiting_for_its_window(tmp_path):
    submit = Submissions()
    packer = BatchPacker(submit, window_sec=3600, max_jobs=2)
    assert await add_all(packer, job(tmp_path, "a"), job(tmp_path, "b")) == ["100", "100"]


async def test_more_jobs_than_max_per_allocation_go_into_further_packs(tmp_path):
    submit = Submissions()
    packer = BatchPacker(submit, window_sec=0.01, max_jobs=2)
    ids = await add_all(packer, *(job(tmp_path, name) for name in "abcde"))
    assert ids == ["100", "100", "101", "101", "102"]
    assert [jobs for _, jobs in submit.packs] == [["a", "b"], ["c", "d"], ["e"]]


@pytest.mark.parametrize("max_jobs", [0, -3])
async def test_a_max_per_allocation_below_one_means_one_job_per_pack(tmp_path, max_jobs):
    submit = Submissions()
    packer = BatchPacker(submit, window_sec=3600, max_jobs=max_jobs)
    assert await add_all(packer, job(tmp_path, "a"), job(tmp_path, "b")) == ["100", "101"]


async def test_a_job_arriving_after_the_window_closed_starts_a_new_pack(tmp_path):
    submit = Submissions()
    packer = BatchPacker(submit, window_sec=0.01, max_jobs=16)
    assert await add_all(packer, job(tmp_path, "a")) == ["100"]
    assert await add_all(packer, job(tmp_path, "b")) == ["101"]
    assert [jobs for _, jobs in submit.packs] == [["a"], ["b"]]


async def test_the_window_holds_a_pack_open_for_jobs_that_come_later(tmp_path):
    submit = Submissions()
    packer = BatchPacker(submit, window_sec=30, max_jobs=3)
    first = asyncio.ensure_future(packer.add(*job(tmp_path, "a")))
    await asyncio.sleep(0)
    assert not first.done() and submit.packs == []  # waiting for more of its batch
    later = await add_all(packer, job(tmp_path, "b"), job(tmp_path, "c"))
    assert await first == later[0] == later[1] == "100"


async def test_a_refused_pack_fails_the_launch_of_every_job_in_it(tmp_path):
    packer = BatchPacker(Submissions(LaunchError("sbatch refused the job: no partition")), window_sec=0.01,
                         max_jobs=16)
    results = await asyncio.gather(packer.add(*job(tmp_path, "a")), packer.add(*job(tmp_path, "b")),
                                   return_exceptions=True)
    assert [str(r) for r in results] == ["sbatch refused the job: no partition"] * 2
