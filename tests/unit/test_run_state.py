"""How a worker's state reaches Prefect (workers/run_state.py), against a client that answers as Prefect's API
does: a server error is tried again until a deadline, a client error is not, and a job's end is set over a
cancel that Prefect's rules would refuse it for."""

from __future__ import annotations

import logging
from uuid import uuid4

import httpx
import pytest
from prefect.client.schemas import OrchestrationResult, SetStateStatus
from prefect.client.schemas.responses import StateAcceptDetails, StateRejectDetails
from prefect.exceptions import PrefectHTTPStatusError
from prefect.states import Cancelled, Cancelling, Completed, Running

from dendro_prefect.workers.run_state import set_run_state

pytestmark = pytest.mark.anyio
LOGGER = logging.getLogger("test")


def http_error(status: int) -> PrefectHTTPStatusError:
    request = httpx.Request("POST", "http://prefect.invalid/api/flow_runs/x/set_state")
    return PrefectHTTPStatusError("error", request=request, response=httpx.Response(status, request=request))


class FakeClient:
    """Answers set_flow_run_state from a script: an exception to raise, or the run's state after the call."""

    def __init__(self, *answers):
        self.answers, self.calls = list(answers), []

    async def set_flow_run_state(self, flow_run_id, state, force=False):
        self.calls.append((state.type, force))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if answer.type == state.type:
            return OrchestrationResult(state=answer, status=SetStateStatus.ACCEPT, details=StateAcceptDetails())
        return OrchestrationResult(state=answer, status=SetStateStatus.REJECT,
                                   details=StateRejectDetails(reason="Cancelling runs may only go to Cancelled"))


async def test_a_server_error_is_tried_again_and_the_state_set(caplog):
    client = FakeClient(http_error(500), httpx.ConnectError("refused"), Completed())
    await set_run_state(client, uuid4(), Completed(), LOGGER)
    assert [type_ for type_, _ in client.calls] == [Completed().type] * 3
    assert "Prefect did not take state Completed (HTTP 500); trying again in 0.5 s" in caplog.text


async def test_a_client_error_is_not_tried_again():
    client = FakeClient(http_error(404))
    with pytest.raises(PrefectHTTPStatusError):
        await set_run_state(client, uuid4(), Running(), LOGGER)
    assert len(client.calls) == 1


async def test_server_errors_past_the_deadline_are_raised():
    client = FakeClient(http_error(503), http_error(503))
    with pytest.raises(PrefectHTTPStatusError):
        await set_run_state(client, uuid4(), Completed(), LOGGER, retry_sec=0.6)
    assert len(client.calls) == 2


async def test_a_jobs_end_is_set_over_a_cancel_that_prefect_refuses_it_for(caplog):
    caplog.set_level(logging.INFO)
    client = FakeClient(Cancelling(), Completed())
    await set_run_state(client, uuid4(), Completed(), LOGGER)
    assert client.calls == [(Completed().type, False), (Completed().type, True)]
    assert "The job ended as its run was being cancelled: Completed" in caplog.text
    # A state that is not an end is left to the cancel, and Cancelled is what Cancelling takes.
    for state in (Running(), Cancelled()):
        client = FakeClient(Cancelling() if state.type != Cancelled().type else state)
        await set_run_state(client, uuid4(), state, LOGGER)
        assert client.calls == [(state.type, False)]
