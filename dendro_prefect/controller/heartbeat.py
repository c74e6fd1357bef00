"""The controller's heartbeat: what a running subscription flow last did, kept where Prefect shows it.

Each controller writes one Prefect Variable, `dendro-controller-<first 16 hex digits of the compute
resource id>` (tag `dendro-controller`), holding the heartbeat as JSON: the UI's Variables page shows
it and `dendro-prefect status` reads it. Each write also emits a Prefect event
`dendro.controller.heartbeat` (resource `dendro.controller.<compute resource id>`, related to the
subscription flow run), so the heartbeat is in the UI's event feed, and an automation can react to
its absence (a proactive trigger: no heartbeat for 5 minutes → notify).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.client.schemas.filters import VariableFilter, VariableFilterTags
from prefect.client.schemas.objects import Variable
from prefect.events import emit_event
from pydantic import BaseModel, Field, ValidationError, field_validator

VARIABLE_PREFIX = "dendro-controller-"
VARIABLE_TAG = "dendro-controller"
EVENT = "dendro.controller.heartbeat"
MAX_ERROR_CHARS = 300  # a variable's value is at most 5,000 characters of JSON
MAX_JOBS_LISTED = 100  # job ids of ~20 characters each

logger = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class ControllerHeartbeat(BaseModel):
    compute_resource_id: str = Field(description="the compute resource's id (0.2) or the compute client's (0.6)")
    protocol: str = Field("dendro-0.2", description="the configuration's protocol (absent in a heartbeat of before 0.6)")
    central_url: str
    flow_run_id: str | None = Field(None, description="the subscription flow run; filled in when published from one")
    last_contact: datetime | None = Field(None, description="last successful call to the central (UTC)")
    last_intake: datetime | None = Field(None, description="last complete intake of unfinished jobs (UTC)")
    pubsub_connected: bool = False
    apps_loaded: int = 0
    jobs_submitted: int = Field(0, description="flow runs created by this controller since it started")
    jobs_outside_prefect: list[str] = Field(
        default_factory=list, description="starting/running jobs of the resource that this Prefect never had a flow "
        f"run of (launched by another controller), left to finish; the first {MAX_JOBS_LISTED}")
    last_error: str | None = Field(None, description="the last error, one line")
    last_error_at: datetime | None = None
    published: datetime | None = Field(None, description="when this heartbeat was written (UTC)")

    @field_validator("jobs_outside_prefect")
    @classmethod
    def _within_a_variable(cls, value: list[str]) -> list[str]:
        return value[:MAX_JOBS_LISTED]

    @field_validator("last_error")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is None:
            return None
        line = " ".join(value.split())
        return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 1] + "…"


def variable_name(compute_resource_id: str) -> str:
    """Variable names allow letters, digits, `-` and `_`, up to 255 characters; 16 hex digits of the
    64 of a resource id tell resources apart and keep the name readable in the UI."""
    return VARIABLE_PREFIX + compute_resource_id.lower()[:16]


# Variable name -> (time.monotonic() of the last write, what must not wait for the interval).
_last_written: dict[str, tuple[float, tuple]] = {}


def _signature(heartbeat: ControllerHeartbeat) -> tuple:
    """A change of these is written at once; the rest (times, counts) at most once per interval."""
    return (heartbeat.flow_run_id, heartbeat.pubsub_connected, heartbeat.apps_loaded, heartbeat.last_error,
            tuple(heartbeat.jobs_outside_prefect))


def _current_flow_run_id() -> str | None:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return str(context.flow_run.id) if context and context.flow_run else None


async def publish_heartbeat(heartbeat: ControllerHeartbeat, min_interval_sec: float = 0.0,
                            client: PrefectClient | None = None, emit: bool = True,
                            log: logging.Logger | logging.LoggerAdapter = logger) -> None:
    """Write the heartbeat into its Variable (and emit its event), unless the last write of this
    controller was less than `min_interval_sec` ago and nothing but times and counts changed. A
    failure is logged, never raised: a heartbeat must not stop the controller."""
    if heartbeat.flow_run_id is None:
        heartbeat = heartbeat.model_copy(update={"flow_run_id": _current_flow_run_id()})
    name = variable_name(heartbeat.compute_resource_id)
    last = _last_written.get(name)
    if last and time.monotonic() - last[0] < min_interval_sec and last[1] == _signature(heartbeat):
        return
    heartbeat = heartbeat.model_copy(update={"published": utcnow()})
    value = heartbeat.model_dump(mode="json")
    try:
        if client is None:
            async with get_client() as own_client:
                await _write(own_client, name, value)
        else:
            await _write(client, name, value)
    except (httpx.HTTPError, OSError, ValidationError) as error:
        log.warning("Heartbeat not written to Prefect variable %s: %s", name, " ".join(str(error).split()))
        return
    _last_written[name] = (time.monotonic(), _signature(heartbeat))
    if emit:
        _emit(heartbeat, name)


async def _write(client: PrefectClient, name: str, value: dict) -> None:
    try:
        await client.update_variable(VariableUpdate(name=name, value=value, tags=[VARIABLE_TAG]))
    except httpx.HTTPStatusError as error:
        if error.response.status_code != 404:
            raise
        await client.create_variable(VariableCreate(name=name, value=value, tags=[VARIABLE_TAG]))


def _emit(heartbeat: ControllerHeartbeat, name: str) -> None:
    related = []
    if heartbeat.flow_run_id:
        related.append({"prefect.resource.id": f"prefect.flow-run.{heartbeat.flow_run_id}",
                        "prefect.resource.role": "flow-run"})
    try:
        emit_event(
            EVENT,
            resource={"prefect.resource.id": f"dendro.controller.{heartbeat.compute_resource_id}",
                      "prefect.resource.name": name, "dendro.central-url": heartbeat.central_url},
            related=related,
            payload=heartbeat.model_dump(mode="json"),
        )
    except Exception as error:  # the event is a courtesy: the variable holds the heartbeat
        logger.debug("Heartbeat event not emitted: %s", error)


async def read_heartbeats(client: PrefectClient | None = None) -> list[ControllerHeartbeat]:
    """Every controller heartbeat on the Prefect server, newest contact first. Variables with our
    tag that do not hold a heartbeat are skipped."""
    if client is None:
        async with get_client() as own_client:
            return await read_heartbeats(own_client)
    heartbeats, offset = [], 0
    while True:
        response = await client.request("POST", "/variables/filter", json={
            "variables": VariableFilter(tags=VariableFilterTags(all_=[VARIABLE_TAG])).model_dump(mode="json"),
            "offset": offset, "limit": 200,
        })
        page = Variable.model_validate_list(response.json())
        for variable in page:
            if not variable.name.startswith(VARIABLE_PREFIX):
                continue
            try:
                heartbeats.append(ControllerHeartbeat.model_validate(variable.value))
            except ValidationError:
                continue
        if len(page) < 200:
            break
        offset += len(page)
    oldest = datetime.min.replace(tzinfo=timezone.utc)
    return sorted(heartbeats, key=lambda h: h.last_contact or oldest, reverse=True)
