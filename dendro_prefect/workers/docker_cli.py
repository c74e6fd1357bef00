"""The `docker run` command line of a job: the one way docker jobs start, on the local pool (a process of
the worker, `local/command.py`) and on Slurm nodes (in the batch script), with the same limits.

Every variable goes through `--env-file` (mode 0600 in the job's secrets directory) and the key is read
from the mounted secrets directory, so neither shows in the process list or in `docker inspect`. The
container outlives a signalled `docker` client, so the command comes with the one that stops it; `--init`
makes the app, not PID 1, receive the stop signal, so that it stops at once.

`ensure_image` looks for the image before a launch on the worker's own machine and pulls it once if it is
missing, so that a missing image fails the launch with docker's reason (a Slurm node pulls in `docker run`).
"""

from __future__ import annotations

import subprocess

from .containers import (
    JOB_LABEL,
    KEY_WRAPPER,
    SECRET_MOUNT,
    container_environment,
    container_name,
    uses_loopback,
    wrapped,
)
from .job_dir import JobDirectory
from .launch import AppCommand, LaunchError, LaunchRequest


def docker_command(request: LaunchRequest, job_dir: JobDirectory) -> AppCommand:
    env = container_environment(request)
    if any("\n" in value for value in env.values()):
        raise LaunchError("docker's --env-file cannot hold a value with a line break")
    env_file = job_dir.write_secret("env", "".join(f"{k}={v}\n" for k, v in env.items()))
    job_dir.write_secret("job_private_key", request.job_private_key.get_secret_value())
    name = container_name(request.job_id)
    argv = [
        "docker", "run", "--rm", "--init", "--name", name, "--label", f"{JOB_LABEL}={request.job_id}",
        "--volume", f"{job_dir.cleanup}:/tmp", "--volume", f"{job_dir.secrets}:{SECRET_MOUNT}:ro",
        "--workdir", "/tmp/working", "--env-file", str(env_file),
        "--cpus", str(max(request.num_cpus, 1)), "--memory", f"{max(int(request.memory_gb * 1024), 6)}m",
    ]
    if uses_loopback(request.central_url):
        argv += ["--network", "host"]
    if request.num_gpus > 0:
        argv += ["--gpus", "all"]
    argv += [request.app_image, *wrapped(KEY_WRAPPER, request.app_argv)]
    return AppCommand(argv, {}, key_in_env=False, stop_argv=["docker", "stop", "--time", "5", name])


LOOKUP_TIMEOUT_SEC = 60.0
DOCKER_PREFIXES = ("Error response from daemon: ", "Error: ", "docker: ")


def ensure_image(image: str) -> None:
    """Have `image` on this machine: look it up, and pull it once if it is missing. A LaunchError with docker's
    reason if it can be neither, if the engine does not answer, or if there is no docker CLI. Blocks for as long
    as the pull takes: call it off the event loop."""
    lookup = _docker("image", "inspect", "--format", "{{.Id}}", image, timeout=LOOKUP_TIMEOUT_SEC)
    if lookup.returncode == 0:
        return
    reason = _reason(lookup)
    if "no such image" not in reason.lower():
        raise LaunchError(f"docker could not look up image {image} on this machine: {reason}")
    pull = _docker("pull", image, timeout=None)
    if pull.returncode != 0:
        raise LaunchError(f"docker image {image} is not on this machine and could not be pulled: {_reason(pull)}")


def _docker(*args: str, timeout: float | None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["docker", *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, errors="replace", timeout=timeout)
    except FileNotFoundError:
        raise LaunchError("there is no `docker` command on the worker's PATH: install the docker CLI, or choose "
                          "another container method") from None
    except OSError as error:
        raise LaunchError(f"cannot run docker: {error.strerror}") from None
    except subprocess.TimeoutExpired:
        raise LaunchError(f"docker did not answer `docker {args[0]} {args[1]}` within {timeout:.0f} s: "
                          f"is its engine running?") from None


def _reason(result: subprocess.CompletedProcess) -> str:
    """docker's last line on stderr, without its "Error ..." prefix."""
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    if not lines:
        return f"docker exited with code {result.returncode}"
    reason = lines[-1]
    for prefix in DOCKER_PREFIXES:
        reason = reason.removeprefix(prefix)
    return reason[:300]
