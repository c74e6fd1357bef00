"""`starting` before a launch, decided without a central: a retry whose earlier try got through is taken
for done; a refusal otherwise stops the launch."""

import asyncio
import logging

import pytest

from dendro_prefect.protocol.client import CentralError
from dendro_prefect.protocol.outbox import set_status_before_launch


class Central:
    """Refuses `starting` as the real central refuses a transition (HTTP 500), and has the job at `status`."""

    def __init__(self, status: str) -> None:
        self.status = status
        self.retry_deadline = 5.0

    def set_job_status(self, job_id, job_private_key, status, retry_deadline=None):
        raise CentralError(f"Cannot set job status to {status} when status is {self.status}", 500)

    def get_job_status(self, job_id, job_private_key):
        return self.status


def launch_allowed(central: Central) -> None:
    asyncio.run(set_status_before_launch(central, "p.j", "key", "starting", logging.getLogger("t"), within=5))


def test_a_starting_whose_answer_was_lost_is_taken_for_done():
    launch_allowed(Central("starting"))


@pytest.mark.parametrize("status", ["running", "failed", None])
def test_a_refused_starting_stops_the_launch(status):
    with pytest.raises(CentralError, match="Cannot set job status to starting"):
        launch_allowed(Central(status))
