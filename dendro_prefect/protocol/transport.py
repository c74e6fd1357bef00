"""HTTP to a Dendro central, of either protocol: one set of retry and error rules.

Transient failures (connection errors, timeouts, 429, 502-504) are retried with exponential backoff
until a deadline, the last try at the deadline itself, so a call survives an outage that ends before
`retry_deadline` seconds have passed since it began. Errors name the method, path and status, never a
key or a header that carries one; `CentralError.transient` says whether the central was unreachable
(worth trying again later) rather than refusing the request.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import requests

logger = logging.getLogger(__name__)

TRANSIENT_STATUS_CODES = frozenset({429, 502, 503, 504})


class CentralError(RuntimeError):
    """A request to the central failed; `status_code` is None when no answer came. `transient`: the
    central was unreachable or overloaded until the retry deadline (no answer, 429, 502-504), so the
    same request may well succeed later; otherwise it answered and refused."""

    def __init__(self, message: str, status_code: int | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.transient = transient


class ClaimRefused(CentralError):
    """`starting` was refused because the job is no longer ours to claim: another compute client took it first
    (Dendro 0.6, where several compute clients serve one service). Not a failure of the job."""


class Transport:
    """Requests to one central, retried by the rules above."""

    def __init__(self, base_url: str, *, request_timeout: float = 30.0, retry_deadline: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.request_timeout = request_timeout
        self.retry_deadline = retry_deadline
        self._session = requests.Session()

    def request(self, method: str, path: str, headers: dict[str, str], json_body: Any = None,
                retry_deadline: float | None = None) -> dict:
        """The answer's JSON. `retry_deadline` (seconds) overrides the transport's for this call; 0 tries once."""
        retry_deadline = self.retry_deadline if retry_deadline is None else retry_deadline
        deadline = time.monotonic() + retry_deadline
        delay = 0.25
        while True:
            failure: str
            status: int | None = None
            try:
                response = self._session.request(
                    method, self.base_url + path, headers=headers, json=json_body, timeout=self.request_timeout
                )
            except (UnicodeEncodeError, requests.exceptions.InvalidHeader):
                # a header (a malformed job's key) that HTTP cannot carry: no retry can help
                raise CentralError(f"{method} {path}: a header of the request cannot be sent") from None
            except requests.RequestException as error:
                failure = f"{type(error).__name__}"
            else:
                if response.ok:
                    try:
                        return response.json()
                    except ValueError:
                        raise CentralError(f"{method} {path}: answer is not JSON", response.status_code) from None
                status = response.status_code
                failure = f"HTTP {status}: {_detail(response)}"
                if status not in TRANSIENT_STATUS_CODES:
                    raise CentralError(f"{method} {path}: {failure}", status)
            left = deadline - time.monotonic()
            if left <= 0:
                raise CentralError(f"{method} {path}: {failure} (gave up after {retry_deadline:.0f} s)", status,
                                   transient=True)
            wait = min(delay, left)
            logger.warning("%s %s: %s; retrying in %.1f s", method, path, failure, wait)
            time.sleep(wait)
            delay = min(delay * 2, 8.0)


def _detail(response: requests.Response) -> str:
    """What the central said was wrong: FastAPI's `detail` (0.2), the service's `error` (0.6)."""
    try:
        answer = response.json()
        detail = answer.get("detail") or answer.get("error")
    except (ValueError, AttributeError):
        detail = None
    text = str(detail) if detail else response.reason or ""
    return text[:200]
