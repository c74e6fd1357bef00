"""Jobs as local processes: the `none` container method, and the container methods whose CLI is a process
too: apptainer/singularity, and docker (`docker run`, the command the Slurm pool's batch script runs). Each
job gets its own session, so killing it takes its whole process group, and a worker restarted while it runs
takes it up by its pid. An app that a signal does not stop (a docker container, which outlives its signalled
client) is stopped first by its command's `stop_argv`, kept in the job directory for a restarted worker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import Callable

from ..commands import CommandBuilder
from ..job_dir import JobDirectory, WatchedJobFiles
from ..launch import InfrastructureState, Launcher, LaunchError, LaunchRequest

KILL_GRACE_SEC = 5.0
STOP_TIMEOUT_SEC = 60.0  # for a stop_argv (`docker stop --time 5` waits 5 s, then kills)


class CommandLauncher(Launcher):
    def __init__(self, kind: str, build_command: CommandBuilder,
                 prepare: Callable[[LaunchRequest], None] | None = None) -> None:
        """`prepare` readies the worker's machine before a launch (pulls a missing docker image), in a thread;
        a LaunchError from it fails the launch before anything starts."""
        self.kind = kind
        self._build_command = build_command
        self._prepare = prepare
        self._processes: dict[str, subprocess.Popen] = {}
        self._files = WatchedJobFiles()
        self._adopted: dict[str, int] = {}  # processes an earlier worker started: no exit code to wait for

    async def submit(self, request: LaunchRequest) -> str:
        if self._prepare is not None:
            await asyncio.to_thread(self._prepare, request)
        job_dir = JobDirectory.create(request.job_dir)
        command = self._build_command(request, job_dir)
        if command.stop_argv:
            job_dir.record_stop_command(command.stop_argv)
        # The worker's own Prefect settings are no business of the app.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(command.env)
        if command.key_in_env:
            env["JOB_PRIVATE_KEY"] = request.job_private_key.get_secret_value()
        try:
            with open(job_dir.stdout, "ab") as stdout:
                process = subprocess.Popen(
                    command.argv, cwd=job_dir.working, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )
        except OSError as error:
            job_dir.remove_secrets()
            raise LaunchError(f"cannot start {command.argv[0]}: {error.strerror}") from None
        infrastructure_id = f"{self.kind}:{process.pid}"
        self._processes[infrastructure_id] = process
        self._watch_files(infrastructure_id, job_dir, request)
        return infrastructure_id

    async def attach(self, infrastructure_id: str, request: LaunchRequest) -> None:
        self._adopted[infrastructure_id] = _pid_of(infrastructure_id)
        self._watch_files(infrastructure_id, JobDirectory(request.job_dir), request)

    def _watch_files(self, infrastructure_id: str, job_dir: JobDirectory, request: LaunchRequest) -> None:
        self._files.watch(infrastructure_id, job_dir, request.job_private_key.get_secret_value(),
                          job_dir.stdout, job_dir.console_output)

    async def states(self, infrastructure_ids: list[str]) -> dict[str, InfrastructureState]:
        states = {}
        for infrastructure_id in infrastructure_ids:
            process = self._processes.get(infrastructure_id)
            if infrastructure_id in self._adopted:
                states[infrastructure_id] = _adopted_state(self._adopted[infrastructure_id])
            elif process is None:
                states[infrastructure_id] = InfrastructureState("gone", reason="not started by this worker")
            elif (code := process.poll()) is None:
                states[infrastructure_id] = InfrastructureState("running")
            else:
                states[infrastructure_id] = InfrastructureState("exited", exit_code=code)
        return states

    async def read_logs(self, infrastructure_id: str) -> list[str]:
        final = infrastructure_id in self._processes and self._processes[infrastructure_id].poll() is not None
        return self._files.read_lines(infrastructure_id, final)

    async def kill(self, infrastructure_id: str) -> None:
        process = self._processes.get(infrastructure_id)
        pid = process.pid if process else _pid_of(infrastructure_id)
        job_dir = self._files.directory(infrastructure_id) or _job_dir_of(pid)
        stop_argv = job_dir.recorded_stop_command() if job_dir else None
        if stop_argv:
            await asyncio.to_thread(_run_quietly, stop_argv)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return
            if process is None:
                return
            try:
                await asyncio.wait_for(asyncio.to_thread(process.wait), KILL_GRACE_SEC)
                return
            except asyncio.TimeoutError:
                continue

    async def release(self, infrastructure_id: str) -> None:
        self._processes.pop(infrastructure_id, None)
        self._adopted.pop(infrastructure_id, None)
        self._files.release(infrastructure_id)


def _adopted_state(pid: int) -> InfrastructureState:
    """Alive unless gone or a zombie; its exit code went to the worker that started it."""
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        state = "X"
    if state in ("Z", "X"):
        return InfrastructureState("exited", reason="the app's process ended while no worker watched it (its exit "
                                   "code went to the worker that started it)")
    return InfrastructureState("running")


def _pid_of(infrastructure_id: str) -> int:
    return int(infrastructure_id.rsplit(":", 1)[1])


def _job_dir_of(pid: int) -> JobDirectory | None:
    """The job directory of a job this launcher does not watch (killed while a restarted worker takes it up):
    its process runs in the job's working directory."""
    try:
        working = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
    job_dir = JobDirectory(working.parent.parent)
    return job_dir if job_dir.working == working else None


def _run_quietly(argv: list[str]) -> None:
    """A stop command; its failure (the container is gone already) leaves the signals to do the rest."""
    try:
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=STOP_TIMEOUT_SEC)
    except (OSError, subprocess.TimeoutExpired):
        pass
