"""Setting a flow run's state as its job's worker: the one way every state a worker sets reaches Prefect.

The worker owns the run's state (app images hold no Prefect), so a state it sets must not be lost on the way:
- a server error or a dropped connection (a loaded server answering 500 when its database pool runs dry) is
  retried for STATE_RETRY_SEC; a final state lost there would leave the run Running after its job ended, with
  no worker following it;
- a run being cancelled takes only Cancelled from Prefect's rules, and silently keeps Cancelling otherwise: a job
  that ended while its run was being cancelled (the cancel came as it ended, or while no worker followed it) has
  its end set over the cancel, since nothing is left to cancel and its end is what the job did.
"""

from __future__ import annotations

import logging
import time

import anyio
import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import StateType
from prefect.exceptions import Abort, PrefectHTTPStatusError
from prefect.states import State
from prefect.utilities.engine import propose_state

STATE_RETRY_SEC = 60.0


async def set_run_state(client: PrefectClient, flow_run_id, state: State, logger: logging.Logger | logging.LoggerAdapter,
                        retry_sec: float = STATE_RETRY_SEC) -> None:
    deadline = time.monotonic() + retry_sec
    delay = 0.5
    while True:
        try:
            now = await propose_state(client, state, flow_run_id=flow_run_id)
            if state.is_final() and now.type == StateType.CANCELLING:
                logger.info("The job ended as its run was being cancelled: %s", state.name)
                await client.set_flow_run_state(flow_run_id, state, force=True)
            return
        except Abort as error:
            logger.warning("Prefect refused state %s: %s", state.type.value, error)
            return
        except (PrefectHTTPStatusError, httpx.TransportError) as error:
            if isinstance(error, PrefectHTTPStatusError) and error.response.status_code < 500:
                raise
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("Prefect did not take state %s (%s); trying again in %.1f s", state.name,
                           _one_line(error), delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, 8.0)


def _one_line(error: Exception) -> str:
    if isinstance(error, PrefectHTTPStatusError):
        return f"HTTP {error.response.status_code}"
    return " ".join(str(error).split()) or type(error).__name__
