"""Jobs as local processes: the `none` container method, and apptainer/singularity (whose CLI is a
process too). Each job gets its own session, so killing it takes its whole process group."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

from ..commands import CommandBuilder
from ..job_dir import JobDirectory, WatchedJobFiles
from ..launch import InfrastructureState, Launcher, LaunchError, LaunchRequest

KILL_GRACE_SEC = 5.0


class CommandLauncher(Launcher):
    def __init__(self, kind: str, build_command: CommandBuilder) -> None:
        self.kind = kind
        self._build_command = build_command
        self._processes: dict[str, subprocess.Popen] = {}
        self._files = WatchedJobFiles()
        self._adopted: dict[str, int] = {}  # processes an earlier worker started: no exit code to wait for

    async def submit(self, request: LaunchRequest) -> str:
        job_dir = JobDirectory.create(request.job_dir)
        command = self._build_command(request, job_dir)
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
        self._watch_files(infrastructure_id, job_dir)
        return infrastructure_id

    async def attach(self, infrastructure_id: str, request: LaunchRequest) -> None:
        self._adopted[infrastructure_id] = _pid_of(infrastructure_id)
        self._watch_files(infrastructure_id, JobDirectory(request.job_dir))

    def _watch_files(self, infrastructure_id: str, job_dir: JobDirectory) -> None:
        self._files.watch(infrastructure_id, job_dir, job_dir.stdout, job_dir.console_output)

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
