"""What a backend is asked to launch, and what it reports back: the one shape every backend shares."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator


class LaunchError(RuntimeError):
    """The backend could not start the job; the message is a one-line reason."""


def one_line(value: object) -> str:
    """An infrastructure's message (a command's output, an API's error) as part of a one-line reason."""
    return " ".join(str(value).split())[:300]


class LaunchRequest(BaseModel):
    """One Dendro job to start. The job private key is kept apart from `env` so that a backend
    passes it by the safest way its infrastructure has (a file, a secret), never in plain sight."""

    job_id: str
    job_private_key: SecretStr
    app_name: str
    app_image: str | None
    app_executable: str
    app_argv: list[str] = []  # the app's command line (its protocol's way to run the executable); [] is [executable]
    env: dict[str, str]
    num_cpus: int
    num_gpus: int
    memory_gb: float
    time_limit_sec: float | None
    job_dir: Path
    batch_id: str | None = None
    flow_run_id: str = ""
    sdk_bin_dir: str = ""  # where the dendro SDK's command is, for an app run as a plain process
    central_url: str = ""  # what the app's SDK talks to (a container reaches a loopback one on the host network)

    @model_validator(mode="after")
    def _argv_of_the_executable(self) -> "LaunchRequest":
        if not self.app_argv:
            self.app_argv = [self.app_executable]
        return self


@dataclass(frozen=True)
class AppCommand:
    """How to start a job's app: its command line and environment. The environment never holds the
    job private key; `key_in_env` says whether the launcher must add it there (from a safe place).
    `stop_argv` stops an app that a signal to its command does not stop (a docker container)."""

    argv: list[str]
    env: dict[str, str]
    key_in_env: bool
    stop_argv: list[str] | None = None


@dataclass(frozen=True)
class InfrastructureState:
    """`running`, or `exited` with an exit code, or `gone` (nothing is known of it any more), or `lost`: the
    infrastructure went away under the job (a node failed, a pod was evicted, a host reclaimed), which says
    nothing about the job itself. `attempt` counts the job's starts so far (`Launcher.run_again`)."""

    phase: Literal["running", "exited", "gone", "lost"]
    exit_code: int | None = None
    reason: str | None = None
    attempt: int = 1


class InfrastructureRetrySetting(BaseModel):
    """The one knob of the pools whose infrastructure can be lost under a job (Slurm, AWS Batch, Kubernetes)."""

    max_infrastructure_retries: int = Field(
        default=2, ge=0, title="Retries on lost infrastructure",
        description="How often a job whose infrastructure was lost under it is started again before it fails: "
        "a Slurm job PREEMPTED, NODE_FAIL or BOOT_FAIL, a Kubernetes pod evicted, an AWS Batch host terminated "
        "(spot reclaim). A new attempt forces its status updates at the central (DENDRO_FORCE_STATUS_UPDATES=1), "
        "since the job already told it that it was running.")


class Launcher(abc.ABC):
    """A backend: it knows only how to submit, watch, read logs of and kill its infrastructure."""

    @abc.abstractmethod
    async def submit(self, request: LaunchRequest) -> str:
        """Start the job; return its infrastructure id."""

    @abc.abstractmethod
    async def states(self, infrastructure_ids: list[str]) -> dict[str, InfrastructureState]:
        """The state of every given job, in as few calls to the infrastructure as it allows: a read, which
        changes nothing (the job's reactions are `run_again` and `kill`, which `JobRun` calls)."""

    @abc.abstractmethod
    async def read_logs(self, infrastructure_id: str) -> list[str]:
        """The log lines that appeared since the last call."""

    @abc.abstractmethod
    async def kill(self, infrastructure_id: str) -> None:
        """Stop the job and everything it started; no error if it is gone already."""

    async def run_again(self, infrastructure_id: str) -> None:
        """Start a `lost` job again on new infrastructure, under the same infrastructure id; LaunchError
        if it cannot be. Only backends whose infrastructure can be lost implement it."""
        raise LaunchError("this infrastructure cannot run a job again")

    async def ended_output(self, infrastructure_id: str, job_id: str) -> list[str]:
        """The output of a job that ended while no worker watched it, where the infrastructure keeps it (a
        Batch job's log stream, a pod's log); none where the job directory holds it (the default)."""
        return []

    async def release(self, infrastructure_id: str) -> None:
        """Free what the job held once it has ended (secrets, containers)."""

    async def attach(self, infrastructure_id: str, request: LaunchRequest) -> None:
        """Take up watching a job that an earlier worker launched (after a restart)."""
