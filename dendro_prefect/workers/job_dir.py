"""A job's directory on the worker's machine, laid out as the original daemon lays it out.

`tmp/` is mounted as the job's /tmp and is what the SDK cleans up at the end; `tmp/working/` is the
app's working directory, whose `_dendro/console_output.txt` holds the app's own output; `secrets/`
(mode 0700) holds the job private key for launchers that pass it as a file.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .tail import FileTail


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
    def exit_code(self) -> Path:
        """Written by a batch script when the app exits: how a job that left the queue ended."""
        return self.root / "exit_code"

    @property
    def slurm_job_ids(self) -> Path:
        """Every Slurm job id the job was submitted as, the current last (requeues add lines)."""
        return self.root / "slurm_job_ids"

    @property
    def launched_as(self) -> Path:
        """The infrastructure id, written as soon as the launch returns: a worker lost before Prefect
        recorded it on the flow run leaves it here for the next one."""
        return self.root / "infrastructure_id"

    def record_launch(self, infrastructure_id: str) -> None:
        if self.root.is_dir():  # cloud backends keep no directory on the worker's machine
            self.launched_as.write_text(infrastructure_id)

    def recorded_launch(self) -> str | None:
        try:
            return self.launched_as.read_text().strip() or None
        except OSError:
            return None

    @property
    def batch_script(self) -> Path:
        return self.root / "batch.sh"

    @property
    def cancelled(self) -> Path:
        """Written when a job packed with others is cancelled before its step starts."""
        return self.root / "cancelled"

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


class WatchedJobFiles:
    """The job directories a launcher watches: the files tailed into the flow-run log, and the
    secrets removed when the job is released. One registry for every backend that writes them."""

    def __init__(self) -> None:
        self._directories: dict[str, JobDirectory] = {}
        self._tails: dict[str, list[FileTail]] = {}

    def watch(self, infrastructure_id: str, job_dir: JobDirectory, *files: Path) -> None:
        self._directories[infrastructure_id] = job_dir
        self._tails[infrastructure_id] = [FileTail(path) for path in files]

    def directory(self, infrastructure_id: str) -> JobDirectory | None:
        return self._directories.get(infrastructure_id)

    def read_lines(self, infrastructure_id: str, final: bool = False) -> list[str]:
        return [line for tail in self._tails.get(infrastructure_id, []) for line in tail.read_lines(final)]

    def release(self, infrastructure_id: str) -> None:
        self._tails.pop(infrastructure_id, None)
        job_dir = self._directories.pop(infrastructure_id, None)
        if job_dir is not None:
            job_dir.remove_secrets()
