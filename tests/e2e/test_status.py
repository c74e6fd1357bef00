"""Liveness: `dendro-prefect status` (pools, workers, running jobs, controller heartbeats) from the
Prefect API, and the health endpoint of a dendro worker started with `--with-healthcheck`.

Tests marked WIRING need the controller to publish its heartbeat on every loop
(`controller/heartbeat.publish_heartbeat`); the others hold without it."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import requests
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

from dendro_prefect.child_processes import free_port, prefect_env
from dendro_prefect.controller.heartbeat import (
    EVENT,
    VARIABLE_TAG,
    ControllerHeartbeat,
    publish_heartbeat,
    read_heartbeats,
    utcnow,
    variable_name,
)
from dendro_prefect.embedded import prefect_worker
from dendro_prefect.protocol.signing import generate_keypair
from tests.conftest import create_letter_count_job, wait_for
from tests.stack import (
    cancel_flow_run,
    create_job_pool,
    final_flow_run,
    finished_job,
    flow_runs_of_job,
    infrastructure_id_of,
    prefect_api,
    run,
    running_controller,
)

DENDRO_PREFECT = str(Path(sys.executable).with_name("dendro-prefect"))


def status(home: Path, api_url: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(prefect_env(home, api_url), COLUMNS="250")
    return subprocess.run([DENDRO_PREFECT, "status", *args], env=env, capture_output=True, text=True, timeout=120)


def status_json(prefect) -> dict:
    result = status(prefect.home, prefect.api_url, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def at(moment: str) -> datetime:
    return datetime.fromisoformat(moment)


def heartbeat_of(prefect, resource_id: str) -> dict | None:
    return next((c for c in status_json(prefect)["controllers"] if c["compute_resource_id"] == resource_id), None)


@pytest.fixture(scope="module")
def status_controller(prefect_stack, tmp_path_factory, sdk_bin):
    """A controller on a pool of its own, polling every second."""
    with running_controller(prefect_stack, tmp_path_factory.mktemp("status"), sdk_bin, poll_interval_sec=1.0) as running:
        yield running


def test_status_shows_the_pool_its_online_worker_and_a_running_job(prefect_stack, status_controller):
    controller = status_controller
    job_id = create_letter_count_job(
        controller.admin, controller.resource_id,
        inputParameters=[{"name": "letter", "value": "o"}, {"name": "delay_sec", "value": 120}],
        requiredResources={"numCpus": 1, "numGpus": 0, "memoryGb": 1, "timeSec": 300})
    infrastructure = "process:" + infrastructure_id_of(job_id, "process")
    wait_for(lambda: controller.admin.job(job_id)["status"] == "running", "the job to run")

    def online_with_job() -> dict | None:
        report = status_json(prefect_stack)
        workers = [w for w in report["workers"] if w["pool"] == controller.pool]
        jobs = [j for j in report["jobs"] if j["job_id"] == job_id and j["state"] == "Running"]
        return report if any(w["status"] == "ONLINE" for w in workers) and jobs else None

    report = wait_for(online_with_job, "status to show the pool's worker ONLINE and the job Running", timeout=60,
                      interval=1.0)
    pools = {p["name"]: p for p in report["pools"]}
    assert pools[controller.pool]["type"] == "dendro-local" and pools[controller.pool]["paused"] is False
    assert pools["dendro-controller"]["type"] == "process"  # the subscription flow's pool
    worker = next(w for w in report["workers"] if w["pool"] == controller.pool and w["status"] == "ONLINE")
    assert utcnow() - at(worker["last_heartbeat"]) < timedelta(seconds=120)
    job = next(j for j in report["jobs"] if j["job_id"] == job_id)
    assert job["app"] == "letter_count" and job["pool"] == controller.pool
    assert job["infrastructure_id"] == infrastructure and job["since"]

    table = status(prefect_stack.home, prefect_stack.api_url)
    assert table.returncode == 0, table.stderr
    for text in ("Work pools", "Workers", "Running jobs", "Controllers", controller.pool, job_id, infrastructure):
        assert text in table.stdout, table.stdout

    cancel_flow_run(flow_runs_of_job(job_id)[0].id)
    assert final_flow_run(job_id).state.is_cancelled()
    assert not any(j["job_id"] == job_id for j in status_json(prefect_stack)["jobs"])


def test_status_shows_the_heartbeat_of_a_running_controller(prefect_stack, status_controller):
    """WIRING: every assertion here needs the controller to publish its heartbeat each loop."""
    controller = status_controller
    first = wait_for(lambda: heartbeat_of(prefect_stack, controller.resource_id),
                     "the controller's heartbeat in `dendro-prefect status`", timeout=30, interval=1.0)
    assert first["flow_run_id"] == controller.subscription_run_id and first["flow_run_state"] == "Running"
    assert first["central_url"] == controller.admin.url
    assert first["pubsub_connected"] is True and first["apps_loaded"] == 1
    assert first["last_contact_age_sec"] < 15 and first["last_error"] is None

    job_id = create_letter_count_job(controller.admin, controller.resource_id)
    assert finished_job(controller.admin, job_id)["status"] == "completed"
    later = wait_for(lambda: (h := heartbeat_of(prefect_stack, controller.resource_id))
                     and at(h["last_contact"]) > at(first["last_contact"])
                     and h["jobs_submitted"] > first["jobs_submitted"] and h,
                     "a newer heartbeat counting the job", timeout=30, interval=1.0)
    assert later["last_contact_age_sec"] < 15

    async def events():
        async with get_client() as client:
            page = await client.read_events(EventFilter(
                event=EventNameFilter(name=[EVENT]),
                resource=EventResourceFilter(id=[f"dendro.controller.{controller.resource_id}"])),
                limit=50)  # the client's default (100) is over the server's maximum
            return page.events

    event = wait_for(lambda: run(events()), "a dendro.controller.heartbeat event", timeout=30, interval=1.0)[0]
    assert f"prefect.flow-run.{controller.subscription_run_id}" in [r.id for r in event.related]


def test_a_published_heartbeat_is_a_prefect_variable_that_status_reads(prefect_stack):
    """publish_heartbeat itself (no controller): one variable per compute resource, updated in place,
    written at most once per interval unless something other than times and counts changed."""
    resource_id, _ = generate_keypair()
    name = variable_name(resource_id)
    beat = ControllerHeartbeat(compute_resource_id=resource_id, central_url="http://127.0.0.1:1",
                               last_contact=utcnow(), pubsub_connected=True, apps_loaded=2, jobs_submitted=3,
                               last_error="central:\n  connection refused", last_error_at=utcnow())
    run(publish_heartbeat(beat, min_interval_sec=60))
    run(publish_heartbeat(beat.model_copy(update={"jobs_submitted": 4}), min_interval_sec=60))  # too soon: skipped
    run(publish_heartbeat(beat.model_copy(update={"jobs_submitted": 5, "pubsub_connected": False}),
                          min_interval_sec=60))  # PubSub changed: written at once

    async def variable():
        async with get_client() as client:
            return await client.read_variable_by_name(name)

    stored = run(variable())
    assert stored.tags == [VARIABLE_TAG] and len(name) <= 255
    assert stored.value["jobs_submitted"] == 5 and stored.value["pubsub_connected"] is False
    assert stored.value["last_error"] == "central: connection refused"
    [read] = [h for h in run(read_heartbeats()) if h.compute_resource_id == resource_id]
    assert read.jobs_submitted == 5 and read.published is not None

    shown = heartbeat_of(prefect_stack, resource_id)
    assert shown["jobs_submitted"] == 5 and shown["flow_run_state"] is None and 0 <= shown["last_contact_age_sec"] < 60
    table = status(prefect_stack.home, prefect_stack.api_url)
    assert "central: connection refused" in table.stdout and "polling" in table.stdout


def test_status_with_an_unreachable_api_exits_1_with_one_line(tmp_path):
    api_url = f"http://127.0.0.1:{free_port()}/api"
    for args in ((), ("--json",)):
        result = status(tmp_path, api_url, *args)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.strip().startswith(f"Error: cannot reach the Prefect API at {api_url}: "), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_worker_started_with_healthcheck_answers_at_health(prefect_stack, tmp_path):
    """Prefect's `prefect worker start --with-healthcheck` serves /health for our workers: 200 once the
    worker polls its pool (503 if it stopped polling for 30 query intervals). Shown for one worker type: the
    four share their worker class's start-up (workers/base.py; tests/unit/test_worker_types.py)."""
    worker_type = "dendro-local"
    pool_name = create_job_pool(f"health-{worker_type}", worker_type).split("/", 1)[1]
    port = free_port()
    env = {"PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1", "PREFECT_WORKER_WEBSERVER_PORT": str(port)}
    with prefect_worker(prefect_stack.home, prefect_stack.api_url, pool_name, worker_type, tmp_path,
                        f"health-{worker_type}.log", env, extra_args=("--with-healthcheck",)) as worker:
        wait_for(lambda: any(w.status.value == "ONLINE" for w in prefect_api().read_workers_for_work_pool(pool_name)),
                 f"the {worker_type} worker to be ONLINE", timeout=60, interval=0.5)

        def health():
            try:
                return requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
            except requests.ConnectionError:
                return None

        response = wait_for(health, "the health endpoint to answer", timeout=30, interval=0.2)
        assert response.status_code == 200 and response.json() == {"message": "OK"}
        assert worker.poll() is None

