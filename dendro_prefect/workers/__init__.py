"""dendro-prefect's Prefect worker types, found by Prefect through the `prefect.collections` entry point."""

from .local import LocalWorker

__all__ = ["LocalWorker"]
