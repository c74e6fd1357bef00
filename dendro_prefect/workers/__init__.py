"""dendro-prefect's Prefect worker types, found by Prefect through the `prefect.collections` entry point."""

from .aws_batch import AwsBatchWorker
from .kubernetes import KubernetesWorker
from .local import LocalWorker
from .slurm import SlurmWorker

__all__ = ["AwsBatchWorker", "KubernetesWorker", "LocalWorker", "SlurmWorker"]
