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
