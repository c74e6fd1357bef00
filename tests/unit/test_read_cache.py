"""The worker's remembered deployment and flow reads (workers/read_cache.py)."""

import asyncio

from pydantic import BaseModel

from dendro_prefect.workers.read_cache import cache_reads


class Deployment(BaseModel):
    job_variables: dict


class CountingClient:
    """Counts the reads that reach the server."""

    def __init__(self) -> None:
        self.reads = 0

    async def read_deployment(self, deployment_id):
        self.reads += 1
        return Deployment(job_variables={"env": {"A": "1"}})

    async def read_flow(self, flow_id):
        self.reads += 1
        return Deployment(job_variables={})


def test_reads_within_the_ttl_reach_the_server_once_and_each_caller_gets_its_own_copy():
    client = CountingClient()
    cache_reads(client, ttl_sec=60)

    async def scenario():
        first = await client.read_deployment("d")
        first.job_variables["env"]["B"] = "2"  # as Prefect merges a run's env into the deployment's
        second = await client.read_deployment("d")
        await client.read_deployment("other")
        return second

    second = asyncio.run(scenario())
    assert client.reads == 2
    assert second.job_variables == {"env": {"A": "1"}}


def test_a_read_after_the_ttl_reaches_the_server_again():
    client = CountingClient()
    cache_reads(client, ttl_sec=0)

    async def scenario():
        await client.read_flow("f")
        await client.read_flow("f")

    asyncio.run(scenario())
    assert client.reads == 2


class SlowClient(CountingClient):
    """Its reads take a while and the first `failures` fail, as a server under load may."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.failures = failures

    async def read_deployment(self, deployment_id):
        self.reads += 1
        await asyncio.sleep(0)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("server busy")
        return Deployment(job_variables={})


def test_runs_submitted_at_once_share_one_read_in_flight():
    client = SlowClient()
    cache_reads(client, ttl_sec=60)

    async def scenario():
        return await asyncio.gather(*(client.read_deployment("d") for _ in range(200)))

    assert len(asyncio.run(scenario())) == 200
    assert client.reads == 1


def test_a_failed_read_is_not_remembered():
    client = SlowClient(failures=1)
    cache_reads(client, ttl_sec=60)

    async def scenario():
        first = await asyncio.gather(client.read_deployment("d"), client.read_deployment("d"), return_exceptions=True)
        return first, await client.read_deployment("d")

    (failed, read_again), then = asyncio.run(scenario())
    assert isinstance(failed, ConnectionError)  # the first caller's read failed: the one waiting read again
    assert read_again == then == Deployment(job_variables={}) and client.reads == 2
