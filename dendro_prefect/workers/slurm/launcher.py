"""Dendro jobs as Slurm batch jobs, through the CLI every cluster has (`sbatch`, `squeue`, `scancel`).

One `squeue` call per poll reports every watched job. A job that has left Slurm's memory is resolved
from the exit code its batch script wrote into the job directory (on the shared file system).
"""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass, field

from ..commands import CommandBuilder
from ..job_dir import JobDirectory, WatchedJobFiles
from ..launch import InfrastructureState, Launcher, LaunchError, LaunchRequest
from .script import render_batch_script

# Slurm job states (squeue %T) → whether the job still holds or awaits its allocation.
ACTIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
    "SUSPENDED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT", "STOPPED",
})
ENDED_STATES = frozenset({
    "COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE", "REVOKED",
})
# Ends that say nothing about the job itself: it is submitted again, a bounded number of times.
RETRIED_STATES = frozenset({"PREEMPTED", "NODE_FAIL", "BOOT_FAIL"})
SLURM_COMMAND_TIMEOUT_SEC = 60


@dataclass
class SlurmSettings:
    partition: str = ""
    gpu_partition: str = ""
    account: str = ""
    qos: str = ""
    extra_sbatch_lines: list[str] = field(default_factory=list)
    setup_lines: list[str] = field(default_factory=list)
    time_margin_sec: float = 60.0
    max_requeues: int = 2


async def _slurm(*args: str) -> subprocess.CompletedProcess:
    try:
        return await asyncio.to_thread(subprocess.run, list(args), capture_output=True, text=True,
                                       timeout=SLURM_COMMAND_TIMEOUT_SEC)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise LaunchError(f"{args[0]} failed: {error}") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


class SlurmLauncher(Launcher):
    def __init__(self, build_command: CommandBuilder, settings: SlurmSettings) -> None:
        self._build_command = build_command
        self.settings = settings
        self._files = WatchedJobFiles()
        self._attempts: dict[str, list[str]] = {}  # infrastructure id → Slurm job ids, the current last

    async def submit(self, request: LaunchRequest) -> str:
        job_dir = JobDirectory.create(request.job_dir)
        job_dir.exit_code.unlink(missing_ok=True)
        settings = self.settings
        script = render_batch_script(
            request, job_dir, self._build_command(request, job_dir), partition=settings.partition,
            gpu_partition=settings.gpu_partition, account=settings.account, qos=settings.qos,
            extra_sbatch_lines=settings.extra_sbatch_lines, setup_lines=settings.setup_lines,
            time_margin_sec=settings.time_margin_sec,
        )
        (job_dir.root / "batch.sh").write_text(script)
        job_dir.slurm_job_ids.unlink(missing_ok=True)
        try:
            slurm_job_id = await self._sbatch(job_dir)
        except LaunchError:
            job_dir.remove_secrets()
            raise
        infrastructure_id = f"slurm:{slurm_job_id}"
        await self.attach(infrastructure_id, request)
        return infrastructure_id

    async def _sbatch(self, job_dir: JobDirectory, *options: str) -> str:
        """Submit the job's script; record the Slurm job id in the job directory (for a later worker)."""
        result = await _slurm("sbatch", "--parsable", *options, str(job_dir.root / "batch.sh"))
        if result.returncode != 0:
            raise LaunchError(f"sbatch refused the job: {_one_line(result.stderr or result.stdout)}")
        slurm_job_id = result.stdout.strip().split(";")[0]
        with open(job_dir.slurm_job_ids, "a") as handle:
            handle.write(slurm_job_id + "\n")
        return slurm_job_id

    async def attach(self, infrastructure_id: str, request: LaunchRequest) -> None:
        job_dir = JobDirectory(request.job_dir)
        self._files.watch(infrastructure_id, job_dir, job_dir.stdout, job_dir.console_output)
        try:
            self._attempts[infrastructure_id] = job_dir.slurm_job_ids.read_text().split()
        except FileNotFoundError:
            self._attempts[infrastructure_id] = [infrastructure_id.split(":", 1)[1]]

    def _current(self, infrastructure_id: str) -> str:
        attempts = self._attempts.get(infrastructure_id)
        return attempts[-1] if attempts else infrastructure_id.split(":", 1)[1]

    async def states(self, infrastructure_ids: list[str]) -> dict[str, InfrastructureState]:
        """One `squeue` for all of them; finished jobs stay listed for Slurm's MinJobAge. A job
        preempted or lost with its node is submitted again, up to `max_requeues` times."""
        slurm_ids = {self._current(i): i for i in infrastructure_ids}
        result = await _slurm("squeue", "--noheader", "--states=all", f"--jobs={','.join(slurm_ids)}",
                              "--format=%i|%T|%r")
        listed: dict[str, tuple[str, str]] = {}
        for line in result.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3:
                listed[parts[0]] = (parts[1], parts[2])
        states = {}
        for slurm_id, infrastructure_id in slurm_ids.items():
            state = listed.get(slurm_id, ("", ""))[0]
            if state in RETRIED_STATES and len(self._attempts[infrastructure_id]) <= self.settings.max_requeues:
                states[infrastructure_id] = await self._requeue(infrastructure_id, state)
            else:
                states[infrastructure_id] = self._state(infrastructure_id, listed.get(slurm_id))
        return states

    async def _requeue(self, infrastructure_id: str, state: str) -> InfrastructureState:
        """Submit the same script again. The job already told the central it was running, so the
        new attempt's SDK forces its status updates (the central allows that only when asked)."""
        job_dir = self._files.directory(infrastructure_id)
        job_dir.exit_code.unlink(missing_ok=True)
        try:
            slurm_job_id = await self._sbatch(job_dir, "--export=ALL,DENDRO_FORCE_STATUS_UPDATES=1")
        except LaunchError as error:
            return InfrastructureState("exited", None, f"Slurm state {state}; resubmitting failed: {error}")
        self._attempts[infrastructure_id].append(slurm_job_id)
        return InfrastructureState("running")

    def _state(self, infrastructure_id: str, listed: tuple[str, str] | None) -> InfrastructureState:
        exit_code = self._exit_code(infrastructure_id)
        if listed is None:
            if exit_code is not None:
                return InfrastructureState("exited", exit_code)
            return InfrastructureState("gone", reason="Slurm no longer knows the job and it left no exit code")
        state, reason = listed
        if state in ACTIVE_STATES and not state.startswith("CANCELLED"):
            return InfrastructureState("running")
        if state == "COMPLETED":
            return InfrastructureState("exited", exit_code if exit_code is not None else 0)
        detail = f"Slurm state {state}" + (f", reason {reason}" if reason and reason != "None" else "")
        if len(self._attempts.get(infrastructure_id, ())) > 1:
            detail += f", attempt {len(self._attempts[infrastructure_id])}"
        return InfrastructureState("exited", exit_code, detail)

    def _exit_code(self, infrastructure_id: str) -> int | None:
        job_dir = self._files.directory(infrastructure_id)
        try:
            return int(job_dir.exit_code.read_text().strip()) if job_dir else None
        except (FileNotFoundError, ValueError):
            return None

    async def read_logs(self, infrastructure_id: str) -> list[str]:
        return self._files.read_lines(infrastructure_id)

    async def kill(self, infrastructure_id: str) -> None:
        await _slurm("scancel", self._current(infrastructure_id))

    async def release(self, infrastructure_id: str) -> None:
        self._attempts.pop(infrastructure_id, None)
        self._files.release(infrastructure_id)
