"""The subscription flow: the long-running bridge from the Dendro central to Prefect flow runs."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from dendro_prefect.bridge.controller import Controller
from dendro_prefect.bridge.routing import DEFAULT_DEPLOYMENTS
from dendro_prefect.config import ComputeResourceConfig


@flow(name="dendro-subscription")
async def subscription(
    config_file: str = ".dendro_compute_resource.json",
    poll_interval_sec: float = 10.0,
    deployments: dict[str, str] = DEFAULT_DEPLOYMENTS,
    run_for_sec: float | None = None,
) -> None:
    """Turn every pending Dendro job of this compute resource into one flow run of the deployment
    its runMethod names; PubSub messages wake it at once, polling every `poll_interval_sec` covers
    lost messages. Runs until cancelled, or for `run_for_sec` seconds."""
    controller = Controller(ComputeResourceConfig.read(Path(config_file)), dict(deployments), get_run_logger())
    await controller.run(poll_interval_sec, run_for_sec)
