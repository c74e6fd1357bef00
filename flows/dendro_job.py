"""The flow that every job deployment names: one flow run per Dendro job.

Its runs are executed by dendro-prefect's workers, which launch the app themselves (app images hold no
Prefect) and set the run's state; this body runs only if such a run is sent to a Prefect engine.
"""

from __future__ import annotations

from prefect import flow


@flow(name="dendro-job")
def dendro_job(job_id: str) -> None:
    raise RuntimeError(
        f"dendro-job {job_id} must run on a dendro work pool (dendro-local, dendro-slurm, ...), not in a Prefect engine"
    )
