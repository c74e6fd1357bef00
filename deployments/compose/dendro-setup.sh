#!/bin/sh
# The `dendro-setup` service of compose.yaml (in dendro-prefect:local as /usr/local/bin/dendro-setup), a one-shot
# run at each `docker-compose up` before the workers start, against the Prefect server of PREFECT_API_URL, with the
# compute resource's configuration in the dendro-prefect home: the work pools of the resource's run methods and the
# controller's, and prefect.yaml's deployments of them, as `dendro-prefect up` makes them (its own functions: a pool
# that exists is kept as an admin edited it, the deployments are applied again).
set -eu

exec python - <<'PY'
import asyncio
import os
from pathlib import Path

from prefect.client.orchestration import get_client

from dendro_prefect.config import ComputeResourceConfig, config_path
from dendro_prefect.embedded import Prefect
from dendro_prefect.up import UpOptions, deploy, ensure_pools, pools_of

config_file = config_path()
config = ComputeResourceConfig.read(config_file)
pools = pools_of(config)


async def create_pools() -> list[str]:
    async with get_client() as client:
        return await ensure_pools(client, pools, UpOptions(config_file))


print(f"Work pools created: {', '.join(asyncio.run(create_pools())) or 'none (all there)'}", flush=True)
prefect = Prefect(Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect"), os.environ["PREFECT_API_URL"])
print(f"Deployments of prefect.yaml applied: {', '.join(deploy(prefect, pools))}", flush=True)
PY
