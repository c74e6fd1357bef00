"""The subscription flow: the long-running controller that turns the Dendro central's jobs into Prefect flow runs."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.states import Cancelled, State

from dendro_prefect.config import read_config
from dendro_prefect.controller.of_protocol import controller_for
from dendro_prefect.controller.routing import DEFAULT_DEPLOYMENTS


@flow(name="dendro-subscription")
async def subscription(
    config_file: str | None = None,
    poll_interval_sec: float = 10.0,
    deployments: dict[str, str] = DEFAULT_DEPLOYMENTS,
    run_for_sec: float | None = None,
    settle_sec: float = 30.0,
) -> State | None:
    """Turn every pending Dendro job of this compute resource (0.2) or compute client (0.6) into one flow run of
    the deployment its runMethod (0.2) or the configuration's default_job_run_method (0.6) names; PubSub messages
    wake it at once, polling every `poll_interval_sec` covers lost messages. Runs until cancelled, or for `run_for_sec` seconds. A disagreement
    between the central and Prefect that a worker would settle itself is acted on after `settle_sec`.
    `config_file`: the compute resource's configuration, by default the one `register-compute-resource`
    wrote into the dendro-prefect home (config.py)."""
    controller = controller_for(read_config(config_file), dict(deployments), get_run_logger(), settle_sec)
    if await controller.run(poll_interval_sec, run_for_sec, flow_run_id=FlowRunContext.get().flow_run.id):
        return Cancelled(message="Cancelled in Prefect")
