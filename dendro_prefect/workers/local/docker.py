"""Jobs as docker containers, through the docker SDK.

The job private key is mounted as a file (read-only, from the job's secrets directory) and read by a
shell wrapper at start, so it is in neither the container's configuration (`docker inspect`) nor any
log. Containers use the host network when the central is on this machine's loopback.
"""

from __future__ import annotations

import asyncio

import docker
from docker.errors import DockerException, ImageNotFound, NotFound
from docker.types import DeviceRequest

from ..containers import (
    JOB_LABEL,
    KEY_WRAPPER,
    SECRET_MOUNT,
    container_environment,
    container_name,
    uses_loopback,
    wrapped,
)
from ..job_dir import JobDirectory, WatchedJobFiles
from ..launch import InfrastructureState, Launcher, LaunchError, LaunchRequest

STOP_TIMEOUT_SEC = 5
CONTAINER_LOG = "container.log"  # the container's own output (the SDK's), streamed like the job's files


class DockerLauncher(Launcher):
    def __init__(self) -> None:
        self._client: docker.DockerClient | None = None
        self._files = WatchedJobFiles()

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = docker.from_env()
            except DockerException as error:
                raise LaunchError(f"docker engine unreachable: {error}") from None
        return self._client

    async def submit(self, request: LaunchRequest) -> str:
        return await asyncio.to_thread(self._submit, request)

    def _submit(self, request: LaunchRequest) -> str:
        self._ensure_image(request.app_image)
        job_dir = JobDirectory.create(request.job_dir)
        env = container_environment(request)
        options: dict = {}
        if uses_loopback(env.get("DENDRO_URL", "")):
            options["network_mode"] = "host"
        if request.num_gpus > 0:
            options["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        job_dir.write_secret("job_private_key", request.job_private_key.get_secret_value())
        try:
            container = self.client.containers.run(
                request.app_image,
                command=wrapped(KEY_WRAPPER, request.app_executable),
                detach=True,
                environment=env,
                volumes={
                    str(job_dir.cleanup): {"bind": "/tmp", "mode": "rw"},
                    str(job_dir.secrets): {"bind": SECRET_MOUNT, "mode": "ro"},
                },
                working_dir="/tmp/working",
                init=True,  # the app, not PID 1, receives the stop signal: it stops at once
                nano_cpus=int(request.num_cpus * 1e9) if request.num_cpus > 0 else None,
                labels={JOB_LABEL: request.job_id},
                name=container_name(request.job_id),
                **options,
            )
        except DockerException as error:
            job_dir.remove_secrets()
            raise LaunchError(f"docker could not start the job: {_one_line(error)}") from None
        infrastructure_id = f"docker:{container.id[:12]}"
        self._files.watch(infrastructure_id, job_dir, job_dir.console_output)
        return infrastructure_id

    async def attach(self, infrastructure_id: str, request: LaunchRequest) -> None:
        job_dir = JobDirectory(request.job_dir)
        self._files.watch(infrastructure_id, job_dir, job_dir.console_output)

    def _ensure_image(self, image: str) -> None:
        """Use the local image; pull it only when it is missing, and say so when that fails."""
        try:
            self.client.images.get(image)
        except ImageNotFound:
            try:
                self.client.images.pull(image)
            except DockerException as error:
                reason = getattr(error, "explanation", None) or str(error)
                raise LaunchError(f"docker image {image} is not on this machine and could not be pulled: "
                                  f"{_one_line(reason)}") from None

    async def states(self, infrastructure_ids: list[str]) -> dict[str, InfrastructureState]:
        """One `docker ps -a` for all of them."""
        containers = await asyncio.to_thread(self.client.containers.list, all=True, filters={"label": JOB_LABEL})
        by_id = {f"docker:{c.id[:12]}": c for c in containers}
        states = {}
        for infrastructure_id in infrastructure_ids:
            container = by_id.get(infrastructure_id)
            if container is None:
                states[infrastructure_id] = InfrastructureState("gone", reason="container not found")
            elif container.status in ("created", "running", "restarting", "paused"):
                states[infrastructure_id] = InfrastructureState("running")
            else:
                state = container.attrs.get("State", {})
                reason = "out of memory" if state.get("OOMKilled") else state.get("Error") or None
                states[infrastructure_id] = InfrastructureState("exited", state.get("ExitCode"), reason)
        return states

    async def read_logs(self, infrastructure_id: str) -> list[str]:
        return await asyncio.to_thread(self._read_logs, infrastructure_id)

    def _read_logs(self, infrastructure_id: str) -> list[str]:
        lines: list[str] = []
        try:
            output = self.client.containers.get(_container_id(infrastructure_id)).logs()
        except NotFound:
            output = b""
        offset = self._files.streamed(infrastructure_id, CONTAINER_LOG)
        if len(output) > offset:
            new, _, _ = output[offset:].rpartition(b"\n")
            if new:
                self._files.set_streamed(infrastructure_id, {CONTAINER_LOG: offset + len(new) + 1})
                lines += [line for line in new.decode(errors="replace").split("\n") if line.strip()]
        return lines + self._files.read_lines(infrastructure_id)

    async def kill(self, infrastructure_id: str) -> None:
        await asyncio.to_thread(self._on_container, infrastructure_id, "stop", timeout=STOP_TIMEOUT_SEC)

    async def release(self, infrastructure_id: str) -> None:
        await asyncio.to_thread(self._on_container, infrastructure_id, "remove", force=True)
        self._files.release(infrastructure_id)

    def _on_container(self, infrastructure_id: str, action: str, **options) -> None:
        """Stop or remove a job's container; one that is gone already needs nothing."""
        try:
            getattr(self.client.containers.get(_container_id(infrastructure_id)), action)(**options)
        except NotFound:
            pass


def _container_id(infrastructure_id: str) -> str:
    return infrastructure_id.split(":", 1)[1]


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:300]
