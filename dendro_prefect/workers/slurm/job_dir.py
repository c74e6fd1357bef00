"""What a Slurm job keeps in its job directory beside what every job keeps there (../job_dir.py): the batch
script, the Slurm job ids it was submitted as, the exit code its script writes, and a packed job's mark."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..job_dir import JobDirectory


@dataclass(frozen=True)
class SlurmJobDirectory(JobDirectory):
    @property
    def batch_script(self) -> Path:
        return self.root / "batch.sh"

    @property
    def slurm_job_ids(self) -> Path:
        """Every Slurm job id the job was submitted as, the current last (a new attempt adds a line)."""
        return self.root / "slurm_job_ids"

    @property
    def exit_code(self) -> Path:
        """Written by the batch script when the app exits: how a job that left the queue ended."""
        return self.root / "exit_code"

    @property
    def cancelled(self) -> Path:
        """Written when a job packed with others is cancelled before its step starts."""
        return self.root / "cancelled"
