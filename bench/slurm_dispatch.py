"""Slurm dispatch: N jobs created at the central at once → all accepted by `sbatch`.

Runs the whole path on this machine (bench/common.py) with a `dendro-slurm` worker and the one-node Slurm
cluster of scripts/start-slurm.sh. The jobs are submitted held (`#SBATCH --hold`), so that Slurm accepts
them without running them, and are cancelled at the end. Prints jobs/s and p50/p99 of job creation →
`sbatch` accepted.

    .venv/bin/python bench/slurm_dispatch.py --jobs 100 --jobs 1000 [--database sqlite] [--server-workers 2]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from common import add_server_options, bench_stack, percentile, server_setup


def submissions(job_root: Path, job_ids: list[str]) -> dict[str, tuple[str, float]]:
    """Job id → (its Slurm job id, when `sbatch` accepted it): the worker writes the Slurm job id
    into the job's directory as soon as `sbatch` answers. Read from the file system, so that the
    benchmark adds no load to the Prefect server it measures."""
    found = {}
    for job_id in job_ids:
        path = job_root / job_id / "slurm_job_ids"
        try:
            found[job_id] = (path.read_text().split()[0], path.stat().st_mtime)
        except (FileNotFoundError, IndexError):
            pass
    return found


def run_once(n: int, workdir: Path, database: str, server_workers: int) -> dict:
    with bench_stack(workdir, database=database, server_workers=server_workers, run_method="slurm", worker_type="dendro-slurm", app="sleeper",
                     job_variables={"extra_sbatch_lines": ["--hold"]}) as stack:
        requests = stack.job_requests(n)
        started = time.time()
        job_ids = stack.admin.create_jobs(requests)
        created = time.time()
        found: dict[str, tuple[str, float]] = {}
        while len(found) < n and time.time() - started < 60 + 2 * n:
            time.sleep(0.5)
            found = submissions(workdir / "dendro-jobs", job_ids)
        elapsed = max(t for _, t in found.values()) - started if found else float("nan")
        latencies = [t - created for _, t in found.values()]
        subprocess.run(["scancel", *[slurm_id for slurm_id, _ in found.values()]], capture_output=True)
        return {"n": n, "submitted": len(found), "creating_s": created - started, "all_submitted_s": elapsed,
                "jobs_per_s": len(found) / elapsed if found else 0.0,
                "p50_s": percentile(latencies, 50) if latencies else float("nan"),
                "p99_s": percentile(latencies, 99) if latencies else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, action="append", help="jobs per run (repeatable); default 100")
    add_server_options(parser)
    args = parser.parse_args()
    for n in args.jobs or [100]:
        with tempfile.TemporaryDirectory(prefix="dendro-bench-") as workdir:
            result = run_once(n, Path(workdir), args.database, args.server_workers)
        print(f"{server_setup(args)}, {result['n']:5d} jobs: {result['submitted']} submitted to Slurm in {result['all_submitted_s']:.1f} s "
              f"({result['jobs_per_s']:.1f} jobs/s; creating them took {result['creating_s']:.1f} s); "
              f"creation → sbatch accepted p50 {result['p50_s']:.2f} s, p99 {result['p99_s']:.2f} s",
              flush=True)


if __name__ == "__main__":
    main()
