"""A job's directory on the worker's machine, laid out as the original daemon lays it out.

`tmp/` is mounted as the job's /tmp and is what the SDK cleans up at the end; `tmp/working/` is the
app's working directory, whose `_dendro/console_output.txt` holds the app's own output; `secrets/`
(mode 0700) holds the job private key for launchers that pass it as a file. The key is on disk only
while the job runs: `secrets/` is removed at its end, and the outputs the dendro SDK prints the key to
are rewritten with it redacted as in the flow-run log.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .job_output import redactor
from .tail import FileTail

LAST_LINES_BYTES = 16384  # enough for the last lines of any output


@dataclass(frozen=True)
class JobDirectory:
    root: Path

    @classmethod
    def create(cls, root: Path) -> "JobDirectory":
        job_dir = cls(root)
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        job_dir.working.mkdir(parents=True, exist_ok=True)
        return job_dir

    @property
    def cleanup(self) -> Path:
        return self.root / "tmp"

    @property
    def working(self) -> Path:
        return self.cleanup / "working"

    @property
    def stdout(self) -> Path:
        return self.root / "stdout.log"

    @property
    def console_output(self) -> Path:
        return self.working / "_dendro" / "console_output.txt"

    @property
    def sdk_log(self) -> Path:
        """The dendro SDK's own debug log: it writes there what it prints, the job key included."""
        return self.working / "_dendro" / "dendro-job.log"

    @property
    def launched_as(self) -> Path:
        """The infrastructure id, written as soon as the launch returns: a worker lost before Prefect
        recorded it on the flow run leaves it here for the next one."""
        return self.root / "infrastructure_id"

    def last_app_lines(self, count: int) -> list[str]:
        """The last lines the app itself wrote (the SDK's child process: console_output.txt holds nothing
        of the SDK's own), as the flow-run log shows them: where the cause of a failure is."""
        try:
            start = max(self.console_output.stat().st_size - LAST_LINES_BYTES, 0)
        except OSError:
            return []
        return FileTail(self.console_output, start).read_lines(final=True)[-count:]

    def record_launch(self, infrastructure_id: str) -> None:
        """On every backend: cloud backends keep nothing else here, but a worker lost before Prefect recorded
        the launch leaves it for the next worker."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.launched_as.write_text(infrastructure_id)

    def recorded_launch(self) -> str | None:
        try:
            return self.launched_as.read_text().strip() or None
        except OSError:
            return None

    @property
    def stop_command(self) -> Path:
        """How to stop an app that a signal to its command does not stop (`AppCommand.stop_argv`: a docker
        container), kept for whichever worker kills the job, this one or one restarted after it."""
        return self.root / "stop_command.json"

    def record_stop_command(self, argv: list[str]) -> None:
        self.stop_command.write_text(json.dumps(argv))

    def recorded_stop_command(self) -> list[str] | None:
        try:
            argv = json.loads(self.stop_command.read_text())
        except (OSError, ValueError):
            return None
        return argv if isinstance(argv, list) and all(isinstance(arg, str) for arg in argv) and argv else None

    @property
    def streamed(self) -> Path:
        """How far each output of the job has reached the flow-run log (bytes per output): a worker
        that takes the job up again goes on from there instead of repeating it."""
        return self.root / "streamed.json"

    def read_streamed(self) -> dict[str, int]:
        try:
            offsets = json.loads(self.streamed.read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in offsets.items() if isinstance(v, int)} if isinstance(offsets, dict) else {}

    def write_streamed(self, offsets: dict[str, int]) -> None:
        if self.root.is_dir():
            temporary = self.streamed.with_suffix(".tmp")
            temporary.write_text(json.dumps(offsets))
            temporary.replace(self.streamed)

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    def write_secret(self, name: str, content: str) -> Path:
        self.secrets.mkdir(mode=0o700, exist_ok=True)
        path = self.secrets / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
        return path

    def remove_secrets(self) -> None:
        shutil.rmtree(self.secrets, ignore_errors=True)

    def redact_outputs(self, redact: Callable[[str], str]) -> None:
        """Rewrite the job's outputs line by line through `redact`, where that changes any (a file that is
        gone or unreadable is left as it is)."""
        for path in (self.stdout, self.sdk_log, self.console_output):
            _redact_file(path, redact)


def _redact_file(path: Path, redact: Callable[[str], str]) -> None:
    temporary = path.with_name(path.name + ".redacting")
    try:
        changed = False
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as source, \
                open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8",
                     errors="surrogateescape", newline="") as target:
            for line in source:
                redacted = redact(line)
                changed = changed or redacted != line
                target.write(redacted)
        if changed:
            temporary.replace(path)
    except OSError:
        pass
    finally:
        temporary.unlink(missing_ok=True)


class WatchedJobFiles:
    """The job directories a launcher watches: the files tailed into the flow-run log, from where the
    log got to (`JobDirectory.streamed`), and the secrets removed and the outputs redacted when the job is
    released. One registry for every backend that writes them.

    How far the log got is recorded only once Prefect surely has the lines (its log handler sends them
    in batches, every 2 s by default): a worker killed before that loses no line, and a restarted one
    repeats at most the last few seconds of output."""

    def __init__(self, record_after_sec: float = 5.0) -> None:
        self._record_after_sec = record_after_sec
        self._directories: dict[str, JobDirectory] = {}
        self._tails: dict[str, list[FileTail]] = {}
        self._streamed: dict[str, dict[str, int]] = {}  # how far each output was read
        self._unrecorded: dict[str, deque[tuple[float, dict[str, int]]]] = {}
        self._redact: dict[str, Callable[[str], str]] = {}

    def watch(self, infrastructure_id: str, job_dir: JobDirectory, job_key: str, *files: Path) -> None:
        """The job's outputs get its flow-run log's redaction (of `job_key`, ...) at its end."""
        self._directories[infrastructure_id] = job_dir
        self._redact[infrastructure_id] = redactor(job_key)
        recorded = job_dir.read_streamed()
        self._streamed[infrastructure_id] = dict(recorded)
        self._unrecorded[infrastructure_id] = deque()
        self._tails[infrastructure_id] = [FileTail(path, recorded.get(path.name, 0)) for path in files]

    def directory(self, infrastructure_id: str) -> JobDirectory | None:
        return self._directories.get(infrastructure_id)

    def read_lines(self, infrastructure_id: str, final: bool = False) -> list[str]:
        tails = self._tails.get(infrastructure_id, [])
        lines = [line for tail in tails for line in tail.read_lines(final)]
        self.set_streamed(infrastructure_id, {tail.path.name: tail.position for tail in tails})
        return lines

    def streamed(self, infrastructure_id: str, name: str) -> int:
        """How far an output that is not a file (a container's log) has been read."""
        return self._streamed.get(infrastructure_id, {}).get(name, 0)

    def set_streamed(self, infrastructure_id: str, offsets: dict[str, int]) -> None:
        """The outputs were read this far; recorded in the job directory once Prefect has the lines."""
        streamed = self._streamed.get(infrastructure_id)
        if streamed is None:
            return
        now = time.monotonic()
        unrecorded = self._unrecorded[infrastructure_id]
        if any(streamed.get(name) != offset for name, offset in offsets.items()):
            streamed.update(offsets)
            unrecorded.append((now, dict(streamed)))
        settled = None
        while unrecorded and now - unrecorded[0][0] >= self._record_after_sec:
            settled = unrecorded.popleft()[1]
        if settled is not None:
            self._directories[infrastructure_id].write_streamed(settled)

    def release(self, infrastructure_id: str) -> None:
        for registry in (self._tails, self._streamed, self._unrecorded):
            registry.pop(infrastructure_id, None)
        job_dir = self._directories.pop(infrastructure_id, None)
        redact = self._redact.pop(infrastructure_id, None)
        if job_dir is not None:
            job_dir.remove_secrets()
            job_dir.redact_outputs(redact)
