"""A job's output on its way into the flow-run log: secrets redacted, and what it says of the job's end."""

from __future__ import annotations

import re
from typing import Callable

REDACTED = "[redacted]"
SDK_FAILURE_PREFIX = "Job failed: "
SDK_EXIT_FAILURE = "Error running job: return code"  # the SDK's reason when the app's process failed

# Signed URLs (the central's and cloud stores' downloads) grant access until they expire: the dendro SDK
# prints them ("Downloading <url>"), so their signatures are redacted like keys.
SIGNATURE = re.compile(r"([?&](?:signature|x-amz-signature|x-amz-credential|x-amz-security-token|sig)=)[^&\s]+",
                       re.IGNORECASE)


def redactor(secret: str) -> Callable[[str], str]:
    def redact(line: str) -> str:
        line = SIGNATURE.sub(rf"\1{REDACTED}", line)
        return line.replace(secret, REDACTED) if secret else line

    return redact


class StreamedOutput:
    """A job's output on its way into the flow-run log (secrets redacted), and what it says of the end."""

    def __init__(self, redact: Callable[[str], str], run_logger) -> None:
        self._redact = redact
        self._logger = run_logger
        self.sdk_failure: str | None = None  # the dendro SDK's reason, from its "Job failed: ..." line
        self.last_line: str | None = None

    def log(self, lines: list[str]) -> None:
        for line in lines:
            line = self._redact(line)
            self._logger.info(line)
            self.last_line = line
            if SDK_FAILURE_PREFIX in line:
                self.sdk_failure = line.split(SDK_FAILURE_PREFIX, 1)[1].strip()

    def failure(self, job_id: str, app_lines: list[str]) -> str:
        """The reason of a job its app failed. The SDK says only "Error running job: return code 1"
        when the app raised; the cause is the app's own last line (an exception's), so that leads the
        run's state message, and the app's last lines end the run's log."""
        reason = self.sdk_failure or "The job failed at the central"
        app_lines = [self._redact(line) for line in app_lines]
        if not app_lines or not reason.startswith(SDK_EXIT_FAILURE):
            return reason
        self._logger.error("Job %s failed (%s); the app's last lines:\n%s", job_id, reason, "\n".join(app_lines))
        return f"{app_lines[-1]} ({reason})"
