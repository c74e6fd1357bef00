"""Dendro jobs as Slurm batch jobs, through the CLI every cluster has (`sbatch`, `squeue`, `scancel`).

One `squeue` call per poll reports every watched job. A job that has left Slurm's memory is resolved
from the exit code its batch script wrote into the job directory (on the shared file system).

Infrastructure ids: `slurm:<Slurm job id>` for a job of its own, `slurm:<allocation id>/<job id>` for
a job packed with others of its batch (it runs as the step named `dendro-<job id>`).
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid

from ..commands import CommandBuilder
from ..job_dir import WatchedJobFiles
from ..launch import InfrastructureState, Launcher, LaunchError, LaunchRequest, one_line
from .job_dir import SlurmJobDirectory
from .packing import BatchPacker, PackedJob
from .script import render_batch_script, render_pack_script
from .settings import SlurmJobSettings

# Slurm job states (squeue %T) → whether the job still holds or awaits its allocation.
UNFINISHED_SLURM_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
    "SUSPENDED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT", "STOPPED",
})
ENDED_STATES = frozenset({
    "COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE", "REVOKED",
})
# Ends that say nothing about the job itself: its infrastructure was lost (the job may run again).
LOST_STATES = frozenset({"PREEMPTED", "NODE_FAIL", "BOOT_FAIL"})
SLURM_COMMAND_TIMEOUT_SEC = 60


async def _slurm(*args: str) -> subprocess.CompletedProcess:
    try:
        return await asyncio.to_thread(subprocess.run, list(args), capture_output=True, text=True,
                                       timeout=SLURM_COMMAND_TIMEOUT_SEC)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise LaunchError(f"{args[0]} failed: {error}") from None


class SlurmLauncher(Launcher):
    def __init__(self, build_command: CommandBuilder, settings: SlurmJobSettings) -> None:
        self._build_command = build_command
        self.settings = settings
        self._files = WatchedJobFiles()
        self._attempts: dict[str, list[str]] = {}  # infrastructure id → Slurm job ids, the current last
        self._packer = BatchPacker(self._submit_pack, settings.pack_window_sec, settings.max_jobs_per_allocation)

    async def submit(self, request: LaunchRequest) -> str:
        job_dir = SlurmJobDirectory.create(request.job_dir)
        for stale in (job_dir.exit_code, job_dir.slurm_job_ids, job_dir.cancelled):
            stale.unlink(missing_ok=True)
        job_dir.batch_script.write_text(render_batch_script(
            request, job_dir, self._build_command(request, job_dir), self.settings))
        try:
            if self._packs(request):
                infrastructure_id = f"slurm:{await self._packer.add(request, job_dir)}/{request.job_id}"
            else:
                infrastructure_id = f"slurm:{await self._sbatch(job_dir.batch_script, [job_dir])}"
        except LaunchError:
            job_dir.remove_secrets()
            raise
        await self.attach(infrastructure_id, request)
        return infrastructure_id

    def _packs(self, request: LaunchRequest) -> bool:
        """Jobs of a batch are packed where the pool enables it; GPU jobs run alone, as in the original."""
        return self.settings.pack_batches and bool(request.batch_id) and request.num_gpus == 0

    async def _submit_pack(self, batch_id: str, jobs: list[PackedJob]) -> str:
        packs = jobs[0][1].root.parent / "slurm-packs"
        packs.mkdir(exist_ok=True)
        script = packs / f"batch-{uuid.uuid4().hex[:12]}.sh"
        script.write_text(render_pack_script(batch_id, jobs, str(packs / "slurm-%j.out"), self.settings))
        return await self._sbatch(script, [job_dir for _, job_dir in jobs])

    async def _sbatch(self, script, job_dirs: list[SlurmJobDirectory], *options: str) -> str:
        """Submit a script; record the Slurm job id in each job's directory (for a later worker)."""
        result = await _slurm("sbatch", "--parsable", *options, str(script))
        if result.returncode != 0:
            raise LaunchError(f"sbatch refused the job: {one_line(result.stderr or result.stdout)}")
        slurm_job_id = result.stdout.strip().split(";")[0]
        for job_dir in job_dirs:
            with open(job_dir.slurm_job_ids, "a") as handle:
                handle.write(slurm_job_id + "\n")
        return slurm_job_id

    async def attach(self, infrastructure_id: str, request: LaunchRequest) -> None:
        job_dir = SlurmJobDirectory(request.job_dir)
        self._files.watch(infrastructure_id, job_dir, request.job_private_key.get_secret_value(),
                          job_dir.stdout, job_dir.console_output)
        try:
            self._attempts[infrastructure_id] = job_dir.slurm_job_ids.read_text().split()
        except FileNotFoundError:
            self._attempts[infrastructure_id] = [_first_slurm_id(infrastructure_id)]

    def _current(self, infrastructure_id: str) -> str:
        attempts = self._attempts.get(infrastructure_id)
        return attempts[-1] if attempts else _first_slurm_id(infrastructure_id)

    def _in_pack(self, infrastructure_id: str) -> bool:
        """Whether the job runs as a step of a packed allocation (a resubmission runs alone)."""
        return "/" in infrastructure_id and len(self._attempts.get(infrastructure_id, ())) <= 1

    async def states(self, infrastructure_ids: list[str]) -> dict[str, InfrastructureState]:
        """One `squeue` for all of them; finished jobs stay listed for Slurm's MinJobAge. A job preempted
        or lost with its node is `lost`. A packed job has ended once its step wrote its exit code, though
        its allocation may still run."""
        current = {i: self._current(i) for i in infrastructure_ids}
        result = await _slurm("squeue", "--noheader", "--states=all", f"--jobs={','.join(set(current.values()))}",
                              "--format=%i|%T|%r")
        listed: dict[str, tuple[str, str]] = {}
        for line in result.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3:
                listed[parts[0]] = (parts[1], parts[2])
        states = {}
        for infrastructure_id, slurm_id in current.items():
            state = listed.get(slurm_id, ("", ""))[0]
            exit_code = self._exit_code(infrastructure_id)
            if self._in_pack(infrastructure_id) and exit_code is not None:
                states[infrastructure_id] = InfrastructureState("exited", exit_code)
            elif state in LOST_STATES:
                states[infrastructure_id] = InfrastructureState(
                    "lost", None, f"Slurm state {state}", attempt=len(self._attempts.get(infrastructure_id, ())) or 1)
            else:
                states[infrastructure_id] = self._state(infrastructure_id, listed.get(slurm_id))
        return states

    async def run_again(self, infrastructure_id: str) -> None:
        """Submit the same script again, alone. The job already told the central it was running, so the
        new attempt's SDK forces its status updates (the central allows that only when asked)."""
        job_dir = self._files.directory(infrastructure_id)
        job_dir.exit_code.unlink(missing_ok=True)
        slurm_job_id = await self._sbatch(job_dir.batch_script, [job_dir], "--export=ALL,DENDRO_FORCE_STATUS_UPDATES=1")
        self._attempts.setdefault(infrastructure_id, [_first_slurm_id(infrastructure_id)]).append(slurm_job_id)

    def _state(self, infrastructure_id: str, listed: tuple[str, str] | None) -> InfrastructureState:
        exit_code = self._exit_code(infrastructure_id)
        if listed is None:
            if exit_code is not None:
                return InfrastructureState("exited", exit_code)
            return InfrastructureState("gone", reason="Slurm no longer knows the job and it left no exit code")
        state, reason = listed
        if state in UNFINISHED_SLURM_STATES and not state.startswith("CANCELLED"):
            return InfrastructureState("running")
        if state == "COMPLETED" and (exit_code is not None or not self._in_pack(infrastructure_id)):
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
        if not self._in_pack(infrastructure_id):
            await _slurm("scancel", self._current(infrastructure_id))
            return
        # One job of a pack: mark it so that its step never starts, and cancel the step if it runs.
        job_dir = self._files.directory(infrastructure_id)
        if job_dir is not None:
            job_dir.cancelled.touch()
        allocation, _, job_id = infrastructure_id.split(":", 1)[1].partition("/")
        result = await _slurm("squeue", "--noheader", "--steps", f"--jobs={allocation}", "--format=%i|%j")
        steps = [line.split("|")[0] for line in result.stdout.split() if line.endswith(f"|dendro-{job_id}")]
        if steps:
            await _slurm("scancel", *steps)

    async def release(self, infrastructure_id: str) -> None:
        self._attempts.pop(infrastructure_id, None)
        self._files.release(infrastructure_id)


def _first_slurm_id(infrastructure_id: str) -> str:
    return infrastructure_id.split(":", 1)[1].split("/", 1)[0]
