"""Batch scripts rendered from template files: `templates/slurm_batch.sh.j2` runs one Dendro job,
`templates/slurm_pack.sh.j2` runs the scripts of several jobs of one batch as steps of one allocation.
Both take their cluster options from `templates/slurm_options.j2`."""

from __future__ import annotations

import math
import shlex
from functools import lru_cache

import jinja2

from ..commands import AppCommand
from ..launch import LaunchRequest
from .job_dir import SlurmJobDirectory
from .settings import SlurmJobSettings


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("dendro_prefect.workers", "templates"),
        keep_trailing_newline=True, undefined=jinja2.StrictUndefined, autoescape=False,
    )
    environment.filters["shell_quote"] = lambda value: shlex.quote(str(value))
    return environment


def sbatch_options(settings: SlurmJobSettings, request: LaunchRequest) -> dict:
    """The pool's cluster settings that become #SBATCH lines (templates/slurm_options.j2)."""
    limit = settings.infrastructure_time_limit(request.time_limit_sec)
    return dict(
        time_limit=slurm_time(limit) if request.time_limit_sec else None,
        partition=(settings.gpu_partition or settings.partition) if request.num_gpus > 0 else settings.partition,
        num_gpus=request.num_gpus,
        account=settings.account,
        qos=settings.qos,
        extra_sbatch_lines=settings.extra_sbatch_lines,
    )


def slurm_time(seconds: float) -> str:
    """`--time` as days-hours:minutes:seconds, rounded up to the next second."""
    total = math.ceil(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"


def memory_mb(request: LaunchRequest) -> int:
    return max(int(request.memory_gb * 1024), 1)


def render_batch_script(request: LaunchRequest, job_dir: SlurmJobDirectory, command: AppCommand,
                        settings: SlurmJobSettings) -> str:
    key_file = job_dir.write_secret("job_private_key", request.job_private_key.get_secret_value()) \
        if command.key_in_env else None
    return _environment().get_template("slurm_batch.sh.j2").render(
        job_id=request.job_id,
        app_name=request.app_name,
        output_file=job_dir.stdout,
        working_dir=job_dir.working,
        num_cpus=max(request.num_cpus, 1),
        memory_mb=memory_mb(request),
        setup_lines=settings.setup_lines,
        env=command.env,
        key_file=key_file,
        command=command.argv,
        stop_command=command.stop_argv,
        exit_code_file=job_dir.exit_code,
        **sbatch_options(settings, request),
    )


def render_pack_script(batch_id: str, jobs: list[tuple[LaunchRequest, SlurmJobDirectory]], output_file: str,
                       settings: SlurmJobSettings) -> str:
    """One allocation for jobs of one batch that ask for the same resources (the first one's)."""
    first = jobs[0][0]
    cpus = max(first.num_cpus, 1)
    return _environment().get_template("slurm_pack.sh.j2").render(
        batch_id=batch_id,
        output_file=output_file,
        num_cpus=cpus,
        memory_per_cpu_mb=math.ceil(memory_mb(first) / cpus),
        jobs=[dict(job_id=request.job_id, cancelled_file=job_dir.cancelled, output_file=job_dir.stdout,
                   working_dir=job_dir.working, script=job_dir.batch_script) for request, job_dir in jobs],
        **sbatch_options(settings, first),
    )
