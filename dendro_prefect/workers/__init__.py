"""dendro-prefect's Prefect worker types, found by Prefect through the `prefect.collections` entry point."""

from .local import LocalWorker
from .slurm import SlurmWorker

__all__ = ["LocalWorker", "SlurmWorker"]
