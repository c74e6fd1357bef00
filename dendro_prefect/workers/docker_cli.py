"""The `docker run` command line of a job, for infrastructure that runs the docker CLI itself (a Slurm
batch script on a node with a docker engine).

Every variable goes through `--env-file` (mode 0600 in the job's secrets directory) and the key is read
from the mounted secrets directory, so neither shows in the process list or in `docker inspect`. The
container outlives a signalled `docker` client, so the command comes with the one that stops it; `--init`
makes the app, not PID 1, receive the stop signal, so that it stops at once.
"""

from __future__ import annotations

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
    if uses_loopback(env.get("DENDRO_URL", "")):
        argv += ["--network", "host"]
    if request.num_gpus > 0:
        argv += ["--gpus", "all"]
    argv += [request.app_image, *wrapped(KEY_WRAPPER, request.app_executable)]
    return AppCommand(argv, {}, key_in_env=False, stop_argv=["docker", "stop", "--time", "5", name])
