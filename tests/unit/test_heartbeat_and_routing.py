"""The controller's heartbeat (its Prefect Variable, written at most once per interval unless something that
matters changed, never raising) against a fake Prefect client; and the routing of a job to its deployment."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from uuid import uuid4

import httpx
import pytest

from dendro_prefect.apps import LoadedApp
from dendro_prefect.controller import heartbeat
from dendro_prefect.controller.heartbeat import (
    EVENT,
    MAX_ERROR_CHARS,
    ControllerHeartbeat,
    publish_heartbeat,
    read_heartbeats,
    variable_name,
)
from dendro_prefect.controller.routing import DEFAULT_DEPLOYMENTS, RoutingError, job_tag, plan_flow_run, resource_tag
from dendro_prefect.protocol.models import AppSpec, DendroJob, parse
from tests.conftest import LETTER_COUNT_APP
from tests.unit.fakes import JOB_KEY, RESOURCE_ID, http_error, job

pytestmark = pytest.mark.anyio


class Variables:
    """Prefect's variables as the heartbeat writes and reads them."""

    def __init__(self) -> None:
        self.values: dict[str, dict] = {}
        self.writes: list[str] = []
        self.fail_with: Exception | None = None

    async def update_variable(self, variable) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        if variable.name not in self.values:
            raise http_error(404)
        self.writes.append("update")
        self.values[variable.name] = variable.value

    async def create_variable(self, variable):
        self.writes.append("create")
        assert variable.tags == ["dendro-controller"]
        self.values[variable.name] = variable.value

    async def request(self, method: str, path: str, json: dict):
        assert (method, path) == ("POST", "/variables/filter")
        assert json["variables"]["tags"]["all_"] == ["dendro-controller"]
        page = [{"name": name, "value": value, "tags": ["dendro-controller"]} for name, value in self.values.items()]
        return SimpleNamespace(json=lambda: page[json["offset"]:json["offset"] + json["limit"]])


@pytest.fixture
def events(monkeypatch) -> list[dict]:
    emitted: list[dict] = []
    monkeypatch.setattr(heartbeat, "emit_event", lambda event, **kwargs: emitted.append(dict(kwargs, event=event)))
    return emitted


@pytest.fixture
def resource_id() -> str:
    """A resource of its own per test: the module remembers when each resource's heartbeat was written."""
    return uuid4().hex * 2


def beat(resource_id: str, **changes) -> ControllerHeartbeat:
    return ControllerHeartbeat(compute_resource_id=resource_id, central_url="https://central.example", **changes)


def test_the_variable_is_named_after_the_first_sixteen_hex_digits_of_the_resource():
    assert variable_name("ABCDEF0123456789" + "f" * 48) == "dendro-controller-abcdef0123456789"


@pytest.mark.parametrize("error, expected", [
    ("central unreachable:\n  Connection refused", "central unreachable: Connection refused"),
    ("x" * 400, "x" * (MAX_ERROR_CHARS - 1) + "…"),
    (None, None),
])
def test_the_last_error_is_one_line_of_at_most_300_characters(error, expected):
    assert beat(RESOURCE_ID, last_error=error).last_error == expected


async def test_the_first_heartbeat_creates_the_variable_and_the_next_updates_it(resource_id, events):
    variables = Variables()
    await publish_heartbeat(beat(resource_id, apps_loaded=1), client=variables)
    await publish_heartbeat(beat(resource_id, apps_loaded=2), client=variables)
    assert variables.writes == ["create", "update"]
    value = variables.values[variable_name(resource_id)]
    assert value["apps_loaded"] == 2 and value["published"] is not None and value["flow_run_id"] is None


async def test_within_the_interval_only_a_change_that_matters_is_written(resource_id, events):
    variables = Variables()
    await publish_heartbeat(beat(resource_id, jobs_submitted=1), min_interval_sec=3600, client=variables)
    await publish_heartbeat(beat(resource_id, jobs_submitted=2), min_interval_sec=3600, client=variables)
    assert len(variables.writes) == 1  # counts and times wait for the interval
    await publish_heartbeat(beat(resource_id, jobs_submitted=2, pubsub_connected=True), min_interval_sec=3600,
                            client=variables)
    await publish_heartbeat(beat(resource_id, last_error="central unreachable"), min_interval_sec=3600,
                            client=variables)
    assert len(variables.writes) == 3
    await publish_heartbeat(beat(resource_id, last_error="central unreachable"), min_interval_sec=0,
                            client=variables)
    assert len(variables.writes) == 4


async def test_a_heartbeat_prefect_cannot_take_is_logged_never_raised_and_written_next_time(resource_id, events,
                                                                                           caplog):
    variables = Variables()
    variables.fail_with = httpx.ConnectError("All connection attempts failed")
    await publish_heartbeat(beat(resource_id), min_interval_sec=3600, client=variables,
                            log=logging.getLogger("tests.heartbeat"))
    assert f"Heartbeat not written to Prefect variable {variable_name(resource_id)}: All connection attempts " \
           "failed" in caplog.text
    assert events == []
    variables.fail_with = None
    await publish_heartbeat(beat(resource_id), min_interval_sec=3600, client=variables)
    assert variables.writes == ["create"]


async def test_each_write_emits_the_heartbeat_event_related_to_its_flow_run(resource_id, events):
    await publish_heartbeat(beat(resource_id, flow_run_id="8f9e7c1a-0000-4000-8000-000000000001"),
                            client=Variables())
    (event,) = events
    assert event["event"] == EVENT
    assert event["resource"]["prefect.resource.id"] == f"dendro.controller.{resource_id}"
    assert event["resource"]["dendro.central-url"] == "https://central.example"
    assert event["related"] == [{"prefect.resource.id": "prefect.flow-run.8f9e7c1a-0000-4000-8000-000000000001",
                                 "prefect.resource.role": "flow-run"}]
    await publish_heartbeat(beat(resource_id), client=Variables(), emit=False)
    assert len(events) == 1


async def test_heartbeats_are_read_newest_contact_first_skipping_what_is_no_heartbeat():
    variables = Variables()
    now = datetime.now(timezone.utc)
    for name, contact in (("a", now - timedelta(minutes=5)), ("b", now), ("c", None)):
        variables.values[f"dendro-controller-{name}"] = beat(name * 64, last_contact=contact).model_dump(mode="json")
    variables.values["dendro-controller-broken"] = {"not": "a heartbeat"}
    variables.values["someone-else"] = beat("d" * 64).model_dump(mode="json")
    assert [h.compute_resource_id[0] for h in await read_heartbeats(variables)] == ["b", "a", "c"]


# --- routing -------------------------------------------------------------------------------------------------------


def letter_count() -> LoadedApp:
    spec = parse(AppSpec, json.loads((LETTER_COUNT_APP / "spec.json").read_text()), "spec")
    return LoadedApp("letter_count", "uri", spec, LETTER_COUNT_APP)


@pytest.mark.parametrize("run_method, deployment", sorted(DEFAULT_DEPLOYMENTS.items()))
def test_each_run_method_goes_to_its_pools_deployment_with_its_tag(run_method, deployment):
    plan = plan_flow_run(parse(DendroJob, job(runMethod=run_method), "job"), letter_count(), DEFAULT_DEPLOYMENTS)
    assert plan.deployment == deployment and f"run-method:{run_method}" in plan.tags


def test_a_job_without_required_resources_leaves_them_to_the_pools_defaults():
    plan = plan_flow_run(parse(DendroJob, job(requiredResources=None), "job"), letter_count(), DEFAULT_DEPLOYMENTS)
    assert set(plan.job_variables) == {"app_name", "app_image", "app_executable"}


def test_an_apps_image_goes_to_the_job_variables_and_no_key_anywhere():
    app = letter_count()
    app.spec = app.spec.model_copy(update={"appImage": "ghcr.io/lab/app:1", "appExecutable": "/app/main.py"})
    job_document = job(requiredResources={"numCpus": 4, "numGpus": 1, "memoryGb": 16, "timeSec": 7200})
    plan = plan_flow_run(parse(DendroJob, job_document, "job"), app, DEFAULT_DEPLOYMENTS)
    assert plan.job_variables == {"app_name": "letter_count", "app_image": "ghcr.io/lab/app:1",
                                  "app_executable": "/app/main.py", "num_cpus": 4, "num_gpus": 1, "memory_gb": 16.0,
                                  "time_limit_sec": 7200.0}
    assert JOB_KEY not in plan.model_dump_json()


def test_a_run_method_whose_deployment_is_empty_cannot_be_routed():
    with pytest.raises(RoutingError, match="no deployment for runMethod local"):
        plan_flow_run(parse(DendroJob, job(runMethod="local"), "job"), letter_count(), {"local": ""})


def test_tags_find_a_jobs_run_and_a_resources_runs():
    assert job_tag("p1.abc") == "job:p1.abc" and resource_tag("c0ffee") == "resource:c0ffee"
