"""Jobs of one Dendro batch (`batchId`) gathered into one Slurm allocation, as the original daemon
packs them: jobs that arrive within a short window and ask for the same resources share one `sbatch`,
each job a step of its own. Fewer, larger allocations suit clusters that limit jobs per user."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from ..launch import LaunchRequest
from .job_dir import SlurmJobDirectory

PackedJob = tuple[LaunchRequest, SlurmJobDirectory]
SubmitPack = Callable[[str, list[PackedJob]], Awaitable[str]]


def pack_key(request: LaunchRequest) -> tuple:
    return request.batch_id, request.num_cpus, request.memory_gb, request.time_limit_sec


@dataclass
class _Pack:
    batch_id: str
    done: asyncio.Future
    jobs: list[PackedJob] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class BatchPacker:
    def __init__(self, submit_pack: SubmitPack, window_sec: float, max_jobs: int) -> None:
        self._submit_pack = submit_pack
        self.window_sec = window_sec
        self.max_jobs = max(max_jobs, 1)
        self._open: dict[tuple, _Pack] = {}
        self._submitting: set[asyncio.Task] = set()

    async def add(self, request: LaunchRequest, job_dir: SlurmJobDirectory) -> str:
        """The Slurm job id of the allocation the job was packed into."""
        loop = asyncio.get_running_loop()
        key = pack_key(request)
        pack = self._open.get(key)
        if pack is None:
            pack = self._open[key] = _Pack(str(request.batch_id), loop.create_future())
            pack.timer = loop.call_later(self.window_sec, self._close, key, pack)
        pack.jobs.append((request, job_dir))
        if len(pack.jobs) >= self.max_jobs:
            self._close(key, pack)
        return await asyncio.shield(pack.done)

    def _close(self, key: tuple, pack: _Pack) -> None:
        if self._open.get(key) is not pack:
            return
        del self._open[key]
        pack.timer.cancel()
        task = asyncio.ensure_future(self._submit(pack))
        self._submitting.add(task)
        task.add_done_callback(self._submitting.discard)

    async def _submit(self, pack: _Pack) -> None:
        try:
            pack.done.set_result(await self._submit_pack(pack.batch_id, pack.jobs))
        except Exception as error:
            pack.done.set_exception(error)
