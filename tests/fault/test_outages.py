"""Outages of the central and of PubSub, with real parts: the stand-in central (its admin API injects
the faults), a Prefect server, the subscription flow, a dendro-local worker and the real dendro SDK.

Neither kind of outage may lose a job or a status update: PubSub is only a hint (polling covers it),
and what the worker cannot tell the central while it is down waits until it is back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter

import requests
from pubnub.enums import PNStatusCategory

from dendro_prefect.protocol.client import CentralClient, CentralError
from dendro_prefect.protocol.outbox import StatusOutbox, set_status_before_launch
from tests.conftest import create_letter_count_job, letter_count_spec, register
from tests.pubnub_listener import subscribed
from tests.stack import (
    final_flow_run,
    finished_job,
    flow_runs_of_job,
    prefect_api,
    running_controller,
    wait_for,
    wait_for_log,
)

OUTAGE_SEC = 60.0  # the outage of the central
POLL_SEC = 2.0
# When polling finds a job, its flow run is created by the next round (rounds start every poll
# interval), or on a busy 2-core machine the one after: the bound says polling took it in, where the
# original daemon's fallback poll would wait up to 10 minutes. How soon the job then leaves pending is the
# pool worker's business (its query interval, the launch): printed, not asserted.
# On the tests' SQLite Prefect server a creation that collides with another writer is answered 503, and
# Prefect's client asks again after 2 s, then 4 s: allowed for too.
INTAKE_BOUND_SEC = 2 * POLL_SEC + 1.0 + 6.0
LOG = logging.getLogger(__name__)


def letter_count_requests(admin, resource_id: str, count: int, **overrides) -> list[dict]:
    """`count` letter_count job requests on one input, for `admin.create_jobs`; each output a file of its own
    (`${job-id}`: a new job replaces the jobs that make its output file)."""
    project_id = admin.create_project("outages")
    admin.upload_file(project_id, "in.txt", b"hello dendro world")
    request = {
        "computeResourceId": resource_id, "projectId": project_id, "processorName": "letter_count",
        "inputFiles": [{"name": "input", "fileName": "in.txt"}],
        "outputFiles": [{"name": "output", "fileName": "out-${job-id}.json"}],
        "inputParameters": [{"name": "letter", "value": "o"}],
        "processorSpec": letter_count_spec()["processors"][0],
        "requiredResources": {"numCpus": 1, "numGpus": 0, "memoryGb": 1, "timeSec": 60},
        "runMethod": "local",
    }
    return [dict(request, **overrides) for _ in range(count)]


def flow_run_state(flow_run_id):
    return prefect_api().read_flow_run(flow_run_id).state


def unreachable_now(client: CentralClient) -> CentralError:
    """The error of one signed request (no retries): the outage as the controller sees it."""
    try:
        client.request("GET", f"/api/compute_resource/compute_resources/{client.compute_resource_id}/apps",
                       {}, retry_deadline=0)
    except CentralError as error:
        return error
    raise AssertionError("the central answered during its outage")


def app_console(ctl, job_id: str) -> str:
    """The console output the dendro SDK writes for a job run as a plain process by the local pool."""
    path = ctl.workdir / "dendro-jobs" / job_id / "tmp" / "working" / "_dendro" / "console_output.txt"
    return path.read_text(errors="replace") if path.exists() else ""


# --- the worker's side, against the stand-in alone ------------------------------------------------------


def test_a_failure_reported_during_an_outage_reaches_the_central_once_it_is_back(central):
    resource = register(central)
    job_id = create_letter_count_job(central, resource.id)
    key = next(j["jobPrivateKey"] for j in resource.client.get_unfinished_jobs() if j["jobId"] == job_id)
    resource.client.set_job_status(job_id, key, "starting")
    gone_id = create_letter_count_job(central, resource.id)
    gone_key = next(j["jobPrivateKey"] for j in resource.client.get_unfinished_jobs() if j["jobId"] == gone_id)
    central.delete_job(gone_id)
    outage = 5.0

    async def scenario() -> tuple[bool, float, bool]:
        outbox = StatusOutbox(first_try_sec=0.5, first_delay_sec=0.5, max_delay_sec=1.0)
        central.fail_requests(outage)
        ends = time.monotonic() + outage
        error = unreachable_now(resource.client)
        assert error.status_code == 503 and error.transient, error
        assert central.job(job_id)["status"] == "starting"  # admin stays up
        delivered_now = await outbox.send(resource.client, job_id, key, "failed", "killed: reason one", LOG)
        assert [u.job_id for u in outbox.pending()] == [job_id]
        assert not await outbox.send(resource.client, job_id, key, "failed", "a second reason", LOG)
        deadline = time.monotonic() + outage + 30
        while outbox.pending():
            assert time.monotonic() < deadline, "the outbox never delivered"
            await asyncio.sleep(0.1)
        delivered_after = time.monotonic() - ends
        # A job deleted meanwhile: the central refuses (500) and the update is dropped, not retried.
        settled = await outbox.send(resource.client, gone_id, gone_key, "failed", "too late", LOG)
        return delivered_now, delivered_after, settled and not outbox.pending()

    delivered_now, delivered_after, gone_settled = asyncio.run(scenario())
    job = central.job(job_id)
    print(f"\nfailure delivered {delivered_after:.1f} s after a {outage:.0f} s outage")
    assert not delivered_now and delivered_after >= 0
    assert job["status"] == "failed" and job["error"] == "killed: reason one"
    assert gone_settled


def test_starting_waits_out_an_outage_and_gives_up_only_at_its_bound(central):
    resource = register(central)
    job_id = create_letter_count_job(central, resource.id)
    key = next(j["jobPrivateKey"] for j in resource.client.get_unfinished_jobs() if j["jobId"] == job_id)

    central.fail_requests(10.0)
    started = time.monotonic()
    try:
        asyncio.run(set_status_before_launch(resource.client, job_id, key, "starting", LOG, within=3.0))
    except CentralError as error:
        assert "unreachable" in str(error) and "not launched" in str(error) and error.transient
    else:
        raise AssertionError("starting was set during the outage")
    assert 3.0 <= time.monotonic() - started < 8.0
    assert central.job(job_id)["status"] == "pending"

    central.fail_requests(4.0)
    ends = time.monotonic() + 4.0
    asyncio.run(set_status_before_launch(resource.client, job_id, key, "starting", LOG, within=60.0))
    print(f"\nstarting set {time.monotonic() - ends:.1f} s after a 4 s outage")
    assert time.monotonic() >= ends - 0.5
    assert central.job(job_id)["status"] == "starting"


# --- the whole compute resource ---------------------------------------------------------------------------


def test_with_pubsub_down_polling_takes_a_new_job_in_within_the_poll_interval(prefect_stack, tmp_path, sdk_bin):
    with running_controller(prefect_stack, tmp_path / "pubsub-down", sdk_bin, poll_interval_sec=POLL_SEC) as ctl:
        ctl.admin.set_pubsub("down")
        assert requests.get(f"{ctl.admin.url}/time/0", timeout=10).status_code == 503
        # The controller's long-poll ended with the outage: its PubSub client reports the error.
        wait_for_log(ctl.subscription_run_id, "(polling continues)")
        delays = []
        for _ in range(3):
            job_id = create_letter_count_job(ctl.admin, ctl.resource_id)
            job = wait_for(lambda: (j := ctl.admin.job(job_id))["status"] != "pending" and j,
                           f"job {job_id} to leave pending", 60)
            assert finished_job(ctl.admin, job_id)["status"] == "completed"
            flow_run = final_flow_run(job_id)
            assert flow_run.state.is_completed()
            delays.append((flow_run.created.timestamp() - job["timestampCreated"],
                           job["timestampStarting"] - job["timestampCreated"]))
        print("\nPubSub down, polling every {:.0f} s: flow run created / job left pending after {} s".format(
            POLL_SEC, ", ".join(f"{run:.1f}/{start:.1f}" for run, start in delays)))
        assert max(created for created, _ in delays) <= INTAKE_BOUND_SEC


def test_messages_twice_and_out_of_order_make_one_flow_run_and_one_launch_per_job(prefect_stack, tmp_path,
                                                                                 sdk_bin):
    """No poll comes within the test: the doubled, reordered messages alone drive the intake. The pool's
    worker queries Prefect only every 600 s too (once at its start, before the jobs existed): the flow
    runs' `Scheduled` events alone bring it the jobs (workers/pickup.py)."""
    poll = 600.0
    with running_controller(prefect_stack, tmp_path / "pubsub-shuffled", sdk_bin, poll_interval_sec=poll,
                            worker_env={"PREFECT_WORKER_QUERY_SECONDS": str(int(poll))}) as ctl:
        client = CentralClient(ctl.admin.url, ctl.resource_id, ctl.config.private_key)
        subscription = client.get_pubsub_subscription()
        ctl.admin.set_pubsub("duplicate-shuffled")
        with subscribed(ctl.admin.pubsub_origin, [subscription.pubnubChannel],
                        subscription.pubnubSubscribeKey) as listener:
            listener.wait_for_status(PNStatusCategory.PNConnectedCategory)
            created = time.monotonic()
            job_ids = ctl.admin.create_jobs(letter_count_requests(ctl.admin, ctl.resource_id, 5))
            jobs = [finished_job(ctl.admin, job_id) for job_id in job_ids]
            took = time.monotonic() - created
            heard = []
            while not listener.messages.empty():
                heard.append(listener.messages.get_nowait().message)
        announced = [m["jobId"] for m in heard if m.get("type") == "newPendingJob"]
        assert Counter(announced) == {job_id: 2 for job_id in job_ids}
        first_heard = list(dict.fromkeys(announced))
        assert first_heard != job_ids, "PubSub delivered the announcements in their order"
        for job in jobs:
            assert job["status"] == "completed", job.get("error")
            assert json.loads(ctl.admin.output(job["jobId"], "output")) == {"letter": "o", "count": 3}
        intake_delays = []
        for job in jobs:
            runs = flow_runs_of_job(job["jobId"])
            assert len(runs) == 1, [r.name for r in runs]
            log = wait_for_log(runs[0].id, f"Job {job['jobId']} launched as")
            assert log.count(f"Job {job['jobId']} launched as") == 1
            intake_delays.append(runs[0].created.timestamp() - job["timestampCreated"])
        print(f"\n{len(job_ids)} jobs, each announced twice out of order: flow runs created "
              f"{min(intake_delays):.1f}-{max(intake_delays):.1f} s after the jobs, all completed {took:.1f} s "
              f"after their creation (no poll and no worker query within {poll:.0f} s)")
        # Any bound well under the poll interval shows the messages drove the intake; a loaded SQLite
        # server takes seconds per flow run (bench/intake_latency.py measures the speed).
        assert max(intake_delays) < poll / 10


def test_a_central_outage_loses_no_status_update(prefect_stack, tmp_path, sdk_bin):
    """While the central answers 503 for OUTAGE_SEC: one job sleeps through it (its app needs the
    central only after), one may need the central during it, and new jobs are created meanwhile."""
    with running_controller(prefect_stack, tmp_path / "central-outage", sdk_bin, poll_interval_sec=POLL_SEC) as ctl:
        client = CentralClient(ctl.admin.url, ctl.resource_id, ctl.config.private_key)
        long_resources = {"numCpus": 1, "numGpus": 0, "memoryGb": 1, "timeSec": OUTAGE_SEC + 120}

        def started(delay_sec: float, **fields) -> str:
            """A job whose app, once running, sleeps `delay_sec` before it needs the central again
            (`running` comes before the app fetches its job: wait for that)."""
            job_id = create_letter_count_job(
                ctl.admin, ctl.resource_id, **fields,
                inputParameters=[{"name": "letter", "value": "o"}, {"name": "delay_sec", "value": delay_sec}])
            wait_for(lambda: "[dendro] Processor:" in app_console(ctl, job_id), f"the app of job {job_id} to run")
            return job_id

        # One after the other, and the outage at once: the sleeper's sleep then outlasts the outage
        # however long the launches take.
        caught = started(OUTAGE_SEC / 2)
        sleeper = started(OUTAGE_SEC + 10, requiredResources=long_resources)
        ctl.admin.fail_requests(OUTAGE_SEC)
        ends = time.monotonic() + OUTAGE_SEC
        error = unreachable_now(client)
        assert error.status_code == 503 and error.transient, error
        pending = ctl.admin.create_jobs(letter_count_requests(ctl.admin, ctl.resource_id, 3))

        def outage_over() -> bool:
            """While it lasts, nothing can have changed at the central."""
            if time.monotonic() >= ends - 1:
                return True
            assert [ctl.admin.job(j)["status"] for j in pending] == ["pending"] * 3
            assert ctl.admin.job(sleeper)["status"] == "running"
            return False

        wait_for(outage_over, "the outage to end", OUTAGE_SEC + 5, interval=1.0)
        worker = ctl.processes[0]
        assert worker.poll() is None, "the worker died during the outage"
        assert flow_run_state(ctl.subscription_run_id).is_running()

        job_ids = [sleeper, caught, *pending]
        finished_after: dict[str, float] = {}

        def all_final() -> bool:
            for job_id in job_ids:
                if job_id not in finished_after and ctl.admin.job(job_id)["status"] in ("completed", "failed"):
                    finished_after[job_id] = time.monotonic() - ends
            return len(finished_after) == len(job_ids)

        wait_for(all_final, "every job to reach a final state at the central", 240, interval=0.5)
        print(f"\nafter a {OUTAGE_SEC:.0f} s outage of the central:")
        for job_id in job_ids:
            job = ctl.admin.job(job_id)
            role = "sleeper" if job_id == sleeper else "caught" if job_id == caught else "created during"
            print(f"  {role:>14} {job_id}: {job['status']} {finished_after[job_id]:5.1f} s after the outage"
                  + (f" ({job['error']})" if job.get("error") else ""))
            flow_run = final_flow_run(job_id)
            if job["status"] == "completed":
                assert flow_run.state.is_completed(), (job_id, flow_run.state)
                assert json.loads(ctl.admin.output(job_id, "output")) == {"letter": "o", "count": 3}
            else:
                assert job_id == caught, f"job {job_id} failed: {job.get('error')}"
                assert job.get("error"), f"job {job_id} failed without a reason"
                assert flow_run.state.is_failed(), (job_id, flow_run.state)
            assert len(flow_runs_of_job(job_id)) == 1
        assert worker.poll() is None, "the worker died"
        assert flow_run_state(ctl.subscription_run_id).is_running(), "the subscription flow run ended"
