"""The batch script of a Dendro job, rendered from `templates/slurm_batch.sh.j2`."""

from __future__ import annotations

import math
import shlex
from functools import lru_cache

import jinja2

from ..commands import AppCommand
from ..job_dir import JobDirectory
from ..launch import LaunchRequest


@lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("dendro_prefect.workers", "templates"),
        keep_trailing_newline=True, undefined=jinja2.StrictUndefined, autoescape=False,
    )
    environment.filters["shell_quote"] = lambda value: shlex.quote(str(value))
    return environment.get_template("slurm_batch.sh.j2")


def slurm_time(seconds: float) -> str:
    """`--time` as days-hours:minutes:seconds, rounded up to the next second."""
    total = math.ceil(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"


def render_batch_script(
    request: LaunchRequest, job_dir: JobDirectory, command: AppCommand, *, partition: str, gpu_partition: str,
    account: str, qos: str, extra_sbatch_lines: list[str], setup_lines: list[str], time_margin_sec: float,
) -> str:
    key_file = job_dir.write_secret("job_private_key", request.job_private_key.get_secret_value()) \
        if command.key_in_env else None
    return _template().render(
        job_id=request.job_id,
        app_name=request.app_name,
        output_file=job_dir.stdout,
        working_dir=job_dir.working,
        num_cpus=max(request.num_cpus, 1),
        memory_mb=max(int(request.memory_gb * 1024), 1),
        time_limit=slurm_time(request.time_limit_sec + time_margin_sec) if request.time_limit_sec else None,
        partition=(gpu_partition or partition) if request.num_gpus > 0 else partition,
        num_gpus=request.num_gpus,
        account=account,
        qos=qos,
        extra_sbatch_lines=extra_sbatch_lines,
        setup_lines=setup_lines,
        env=command.env,
        key_file=key_file,
        command=command.argv,
        exit_code_file=job_dir.exit_code,
    )
