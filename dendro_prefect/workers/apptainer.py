"""The apptainer/singularity command line of a job, after their documented `exec` CLI.

Every environment variable, the job private key included, goes through `--env-file` (mode 0600 in
the job's secrets directory), so none of them shows in the process list.
"""

from __future__ import annotations

from .containers import container_environment
from .job_dir import JobDirectory
from .launch import AppCommand, LaunchRequest


def apptainer_command_builder(executable: str):
    """For `apptainer` or `singularity`: the same CLI under either name."""

    def build(request: LaunchRequest, job_dir: JobDirectory) -> AppCommand:
        env = dict(container_environment(request), JOB_PRIVATE_KEY=request.job_private_key.get_secret_value())
        env_file = job_dir.write_secret("env", "".join(f"{k}={_quote(v)}\n" for k, v in env.items()))
        command = [
            executable, "exec",
            "--bind", f"{job_dir.cleanup}:/tmp",
            "--pwd", "/tmp/working",
            "--cleanenv", "--contain",
            "--env-file", str(env_file),
        ]
        if request.num_gpus > 0:
            command.append("--nv")
        image = request.app_image
        if "://" not in image and not image.endswith(".sif"):
            image = f"docker://{image}"
        return AppCommand([*command, image, *request.app_argv], {}, key_in_env=False)

    return build


def _quote(value: str) -> str:
    """Env-file values are shell words: single-quote them."""
    return "'" + value.replace("'", "'\\''") + "'"
