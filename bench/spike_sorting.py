"""The spike-sorting job on each pool: its wall time, its peak memory and the controller's overhead.

For each pool (local and Slurm, each as a plain process and in docker), mountainsort5 jobs of the project's
app (apps/mountainsort5) on the synthetic recording (30 s × 16 channels × 6 units, ground truth known)
go one at a time through the whole path on this machine (bench/common.py: Prefect server, central
stand-in, subscription flow, the pool's worker). Prints the medians of:
- created → `starting` (launched) and → `running` (the app's SDK started): the controller before the app;
- `running` → `completed` at the central: the job itself (SDK, reading, sorting, upload);
- `completed` at the central → the flow run Completed in Prefect: the app's exit and the worker after it;
- created → `completed`: the job's wall time as its user sees it;
- the sorting process's peak memory (the app's last line) and the units' accuracy against the ground truth.

Start a docker engine (scripts/start-dockerd.sh) and Slurm (scripts/start-slurm.sh) first: a pool whose
infrastructure does not answer is skipped, with the reason.

    .venv/bin/python bench/spike_sorting.py [--pool process|docker|slurm|slurm-docker ...] [--jobs 3] [--database postgres|sqlite] [--server-workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import time
from pathlib import Path

from common import add_server_options, bench_stack, bench_workdir
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

from dendro_prefect import spike_sorting

POOLS = {  # name: (the resource's container method, runMethod, worker type, job variables, in the image?, what must answer)
    "process": ("none", "local", "dendro-local", {}, False, None),
    "docker": ("docker", "local", "dendro-local", {}, True, ["docker", "info"]),
    "slurm": ("none", "slurm", "dendro-slurm", {"partition": "debug"}, False, None),
    "slurm-docker": ("none", "slurm", "dendro-slurm", {"container_method": "docker"}, True, ["docker", "info"]),
}
PEAK_MEMORY = re.compile(r"peak memory (\d+) MB")


async def completed_in_prefect(job_id: str, deadline_sec: float = 120.0) -> float:
    """When the job's flow run reached its final state (the state's timestamp)."""
    deadline = time.monotonic() + deadline_sec
    async with get_client() as client:
        while True:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"job:{job_id}"])))
            if runs and runs[0].state is not None and runs[0].state.is_final():
                return runs[0].state.timestamp.timestamp()
            if time.monotonic() > deadline:
                raise SystemExit(f"the flow run of job {job_id} did not end within {deadline_sec:g} s")
            await asyncio.sleep(0.2)


def sort_once(stack, recording, workdir: Path, run_method: str, deadline_sec: float) -> dict[str, float]:
    project_id = stack.admin.create_project("bench")
    stack.admin.upload_file(project_id, "recording.nwb", recording.nwb.read_bytes())
    job_id = stack.admin.create_job(spike_sorting.job_request(stack.resource_id, project_id, "recording.nwb", run_method))
    deadline = time.monotonic() + deadline_sec
    while (job := stack.admin.job(job_id))["status"] not in ("completed", "failed"):
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} still {job['status']} after {deadline_sec:g} s")
        time.sleep(0.1)
    if job["status"] != "completed":
        raise SystemExit(f"job {job_id} failed: {job.get('error')}")
    sorted_nwb = workdir / f"{job_id}.nwb"
    sorted_nwb.write_bytes(stack.admin.output(job_id, "output"))
    summary = spike_sorting.compare_with_ground_truth(sorted_nwb, recording)
    console = stack.admin.output(job_id, "_console_output").decode(errors="replace")
    peak = PEAK_MEMORY.findall(console)
    return {
        "created → starting": job["timestampStarting"] - job["timestampCreated"],
        "created → running": job["timestampStarted"] - job["timestampCreated"],
        "running → completed": job["timestampFinished"] - job["timestampStarted"],
        "completed → Prefect Completed": asyncio.run(completed_in_prefect(job_id)) - job["timestampFinished"],
        "created → completed (wall)": job["timestampFinished"] - job["timestampCreated"],
        "peak memory (MB)": float(peak[-1]) if peak else float("nan"),
        "units with accuracy ≥ 0.8": float(sum(a >= 0.8 for a in summary["accuracies"].values())),
    }


def bench_pool(pool: str, jobs: int, workdir: Path, database: str, server_workers: int, recording, deadline_sec: float) -> None:
    method, run_method, worker_type, job_variables, in_image, probe = POOLS[pool]
    if probe and subprocess.run(probe, capture_output=True).returncode != 0:
        print(f"{pool}: skipped, `{' '.join(probe)}` does not answer", flush=True)
        return
    if run_method == "slurm" and subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        print(f"{pool}: skipped, `sinfo` does not answer", flush=True)
        return
    if in_image:
        spike_sorting.build_image()
    pool_dir = workdir / pool
    pool_dir.mkdir(parents=True, exist_ok=True)
    spec_uri = spike_sorting.spec_uri(pool_dir, spike_sorting.IMAGE if in_image else None)
    with bench_stack(pool_dir, database=database, server_workers=server_workers, run_method=run_method, worker_type=worker_type, app="mountainsort5",
                     job_variables=job_variables, spec_uri=spec_uri, container_method=method) as stack:
        samples = [sort_once(stack, recording, pool_dir, run_method, deadline_sec) for _ in range(jobs)]
    print(f"{pool} ({database}, {jobs} jobs one at a time, medians):", flush=True)
    for name in samples[0]:
        unit = "" if "MB" in name or "units" in name else " s"
        values = ", ".join(f"{s[name]:.2f}" for s in samples)
        print(f"  {name:30s} {statistics.median(s[name] for s in samples):8.2f}{unit}   ({values})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", choices=list(POOLS), action="append", help="the pools to measure (all by default)")
    parser.add_argument("--jobs", type=int, default=3, help="jobs per pool, one after the other")
    add_server_options(parser)
    parser.add_argument("--deadline-sec", type=float, default=600.0, help="for each job")
    parser.add_argument("--workdir", type=Path, help="keep the stacks' files in DIR/spike_sorting")
    args = parser.parse_args()
    with bench_workdir(args.workdir, "spike_sorting") as workdir:
        recording = spike_sorting.make_recording(workdir / "recording")
        for pool in args.pool or list(POOLS):
            bench_pool(pool, args.jobs, workdir, args.database, args.server_workers, recording, args.deadline_sec)


if __name__ == "__main__":
    main()
