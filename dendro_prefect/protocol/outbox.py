"""Status updates for the central that must not be lost while it is down: the one way a job is failed at the
central, by the workers and by the controller alike.

`StatusOutbox` holds the updates a worker (or the controller) could not deliver (a job's failure and its reason) and
retries each with backoff in the background until the central takes it, or refuses it for good: the
job is gone, the job has ended already, or any other answer that is not an outage (the central answers
every refusal with HTTP 500 and its reason). It
lives in memory, one per worker: a worker that dies with a non-empty outbox loses it, and then the
controller, which fails at the central every job whose flow run ended while the job is still
starting or running there, reports those jobs instead.

`set_status_before_launch` is the other half: a job is never launched before the central has it
`starting`. While the central cannot be reached, the worker keeps trying, with backoff, for up to
STARTING_DEADLINE_SEC (a warning per retry round names the cause), and launches once it gets
through. Only then does it give up: the job is not launched, its flow run fails with a reason that
names the central's unreachability, and the failure goes through the outbox. Retrying is the
simplest correct choice: launching without `starting` would let the app's own `running` be refused,
and failing the run at once would turn every short outage into failed jobs, since the controller
makes no second flow run for a job (the job id is the idempotency key).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import anyio

from .client import CentralClient, CentralError
from .models import JobStatus
from .transport import ClaimRefused

logger = logging.getLogger(__name__)

FIRST_TRY_SEC = 10.0  # a send first tries this long (the client's retries) before the outbox takes over
RETRY_FIRST_DELAY_SEC = 2.0
RETRY_MAX_DELAY_SEC = 30.0
STARTING_DEADLINE_SEC = 600.0

Log = logging.Logger | logging.LoggerAdapter
T = TypeVar("T")


@dataclass
class PendingUpdate:
    """One status update the central has not taken yet."""

    client: CentralClient
    job_id: str
    job_private_key: str = field(repr=False)
    status: JobStatus
    error: str | None
    log: Log = field(repr=False)
    queued_at: float = field(default_factory=time.monotonic)
    attempts: int = 1


@dataclass(eq=False)
class StatusOutbox:
    """Undelivered status updates of one worker or controller, each retried by a task of its own (its event
    loop runs them); at most one per job: the central takes one final status per job."""

    first_try_sec: float = FIRST_TRY_SEC
    first_delay_sec: float = RETRY_FIRST_DELAY_SEC
    max_delay_sec: float = RETRY_MAX_DELAY_SEC
    _pending: dict[str, PendingUpdate] = field(default_factory=dict)
    _tasks: set[asyncio.Task] = field(default_factory=set)

    def pending(self) -> list[PendingUpdate]:
        return list(self._pending.values())

    async def send(self, client: CentralClient, job_id: str, job_private_key: str, status: JobStatus,
                   error: str | None, log: Log) -> bool:
        """Deliver the update now, or keep it for the background if the central cannot be reached;
        True iff the central took it now. Never raises for the central's sake: a refusal is logged."""
        if job_id in self._pending:
            log.warning("Job %s: the central has not taken an earlier update yet; %s not sent", job_id, status)
            return False
        update = PendingUpdate(client, job_id, job_private_key, status, error, log)
        if await self._try(update, self.first_try_sec):
            return True
        if job_id in self._pending:  # sent twice at once: one copy waits already
            return False
        self._pending[job_id] = update
        log.warning("Job %s: the central is unreachable; status %s kept in the outbox and retried until it "
                    "is delivered", job_id, status)
        task = asyncio.get_running_loop().create_task(self._retry(update))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return False

    async def _try(self, update: PendingUpdate, retry_deadline: float) -> bool:
        """True when the update is settled (delivered, or refused for good); False to try again."""
        try:
            await anyio.to_thread.run_sync(self._send, update, retry_deadline)
            return True
        except CentralError as error:
            if error.transient:
                return False
            self._refused(update, error)
            return True

    @staticmethod
    def _send(update: PendingUpdate, retry_deadline: float | None) -> None:
        update.client.set_job_status(update.job_id, update.job_private_key, update.status, update.error,
                                     retry_deadline=retry_deadline)

    @staticmethod
    def _refused(update: PendingUpdate, error: CentralError) -> None:
        update.log.warning("Job %s: the central refused status %s (not retried): %s", update.job_id, update.status,
                           error)

    async def _retry(self, update: PendingUpdate) -> None:
        def tried(error: CentralError, left: float | None) -> None:
            update.attempts += 1

        try:
            await anyio.sleep(self.first_delay_sec)
            await until_central_answers(lambda _: self._send(update, 0), tried, first_delay_sec=self.first_delay_sec,
                                        max_delay_sec=self.max_delay_sec)
            waited = time.monotonic() - update.queued_at
            update.log.info("Job %s: status %s from the outbox settled at the central after %.0f s (%d tries)",
                            update.job_id, update.status, waited, update.attempts + 1)
        except CentralError as error:  # a refusal: settled, not delivered
            self._refused(update, error)
        except Exception:  # not an outage (those are retried): say that the update is lost
            update.log.exception("Job %s: status %s from the outbox is lost", update.job_id, update.status)
        finally:
            self._pending.pop(update.job_id, None)


async def until_central_answers(call: Callable[[float | None], T], log_outage: Callable[[CentralError, float | None], None],
                                within: float | None = None, first_delay_sec: float = RETRY_FIRST_DELAY_SEC,
                                max_delay_sec: float = RETRY_MAX_DELAY_SEC) -> T:
    """The one retry loop towards the central over the client's own (protocol/client.py): `call(seconds
    left)`, a central call run in a thread, retried with backoff while the central is unreachable, for up to
    `within` seconds (None: as long as it takes), calling `log_outage(error, seconds left)` before each wait.
    A refusal, or an outage past `within`, raises its CentralError."""
    deadline = None if within is None else time.monotonic() + within
    delay = first_delay_sec
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return await anyio.to_thread.run_sync(call, left)
        except CentralError as error:
            if not error.transient or (deadline is not None and time.monotonic() >= deadline):
                raise
            left = None if deadline is None else deadline - time.monotonic()
            log_outage(error, left)
            await anyio.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 2, max_delay_sec)


async def set_status_before_launch(client: CentralClient, job_id: str, job_private_key: str, status: JobStatus,
                                   log: Log, within: float = STARTING_DEADLINE_SEC) -> None:
    """Set the job's status (`starting`) at the central, retrying while it is unreachable for up to
    `within` seconds (see the module's docstring); raise CentralError, naming the central's
    unreachability, when it never got through, or at once when the central refused."""
    def send(left: float | None) -> None:
        client.set_job_status(job_id, job_private_key, status, retry_deadline=min(client.retry_deadline, left))

    def outage(error: CentralError, left: float | None) -> None:
        log.warning("Job %s not launched yet: the central is unreachable (%s); trying again for %.0f s more",
                    job_id, error, left)

    try:
        await until_central_answers(send, outage, within)
    except CentralError as error:
        # The central refuses a second `starting` like any other transition it does not allow (HTTP 500,
        # "Cannot set job status to starting when status is starting"): an earlier try got through and its
        # answer was lost.
        if not error.transient and not isinstance(error, ClaimRefused) and await _already(
                client, job_id, job_private_key, status):
            return
        if not error.transient:
            raise
        raise CentralError(f"the central was unreachable for {within:.0f} s, so job {job_id} could not be "
                           f"set {status} and was not launched: {error}", error.status_code,
                           transient=True) from None


async def _already(client: CentralClient, job_id: str, job_private_key: str, status: JobStatus) -> bool:
    try:
        return await anyio.to_thread.run_sync(lambda: client.get_job_status(job_id, job_private_key)) == status
    except CentralError:
        return False
