"""Our four worker types as Prefect finds them (the `prefect.collections` entry point): each a DendroWorker
that leaves Prefect's worker life (start-up, polling, heartbeats, --with-healthcheck's /health) as it is,
so that what tests/e2e/test_status.py shows of one type's health check holds for all four."""

from __future__ import annotations

import pytest
from prefect.plugins import load_prefect_collections
from prefect.workers.base import BaseWorker

from dendro_prefect.workers.base import DendroWorker

WORKER_TYPES = ["dendro-local", "dendro-slurm", "dendro-aws-batch", "dendro-kubernetes"]
# BaseWorker's methods that make a worker's life: a worker type that overrode one could start or poll
# differently from the one type whose health check runs end to end.
LIFE = ("start", "setup", "teardown", "sync_with_backend", "get_and_submit_flow_runs", "__aenter__", "__aexit__")


@pytest.mark.parametrize("worker_type", WORKER_TYPES)
def test_prefect_finds_the_worker_type_and_it_lives_as_the_others(worker_type):
    load_prefect_collections()
    worker_class = BaseWorker.get_worker_class_from_type(worker_type)
    assert worker_class is not None and issubclass(worker_class, DendroWorker)
    assert [name for name in LIFE if name in vars(worker_class)] == []
