"""Cancellation is one mechanism, the job's own loop (tests/unit/test_job_run.py): Prefect's cancelling observer,
which calls `kill_infrastructure` for a launched run that was not Running yet, kills only what no loop of this
worker follows."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from dendro_prefect.workers.base import DendroJobConfiguration, DendroWorker
from dendro_prefect.workers.launch import Launcher


class RecordingLauncher(Launcher):
    def __init__(self) -> None:
        self.killed: list[str] = []
        self.released: list[str] = []

    async def submit(self, request):
        raise NotImplementedError

    async def states(self, infrastructure_ids):
        return {}

    async def read_logs(self, infrastructure_id):
        return []

    async def kill(self, infrastructure_id):
        self.killed.append(infrastructure_id)

    async def release(self, infrastructure_id):
        self.released.append(infrastructure_id)


class NoSettings(BaseModel):
    pass


class OneLauncherWorker(DendroWorker):
    type = "dendro-unit-kill"
    settings_model = NoSettings
    launched = RecordingLauncher()

    def new_launcher(self, settings: BaseModel) -> Launcher:
        return self.launched


def test_a_run_its_own_loop_follows_is_left_to_it_and_another_is_killed_and_released():
    worker = OneLauncherWorker(work_pool_name="unit-kill")
    worker._following["a-flow-run-id"] = "fake:followed"
    configuration = DendroJobConfiguration()
    asyncio.run(worker.kill_infrastructure("fake:followed", configuration))
    asyncio.run(worker.kill_infrastructure("fake:orphan", configuration))
    assert worker.launched.killed == ["fake:orphan"] and worker.launched.released == ["fake:orphan"]
