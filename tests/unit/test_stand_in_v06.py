"""The stand-in's Dendro 0.6 service API (dendro_prefect/stand_in/v06), in process: its app served on a loopback
port from a thread, driven by our compute client (`ServiceClient`), the admin client and plain requests as the
real SDK sends them. The rules are the TypeScript service's (apiHelpers/requestHandlers.ts)."""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import pytest
import requests
import uvicorn
from pydantic import TypeAdapter

from dendro_prefect.protocol.v06.client import ClaimRefused, ServiceClient
from dendro_prefect.protocol.v06.models import (
    GetJobResponse,
    GetPubsubSubscriptionResponse,
    GetRunnableJobsForComputeClientResponse,
    GetSignedUploadUrlResponse,
    PubsubHint,
    ServiceJob,
)
from dendro_prefect.protocol.v06.registration import read_registration_code
from dendro_prefect.stand_in.admin_client import AdminError, StandInAdmin
from dendro_prefect.stand_in.app import create_app
from dendro_prefect.stand_in.server import build_central
from dendro_prefect.stand_in.v06 import files
from dendro_prefect.stand_in.v06.job_hash import deterministic_json, javascript_number, job_definition_hash

SERVICE = "hello_world_service"
from tests.conftest import REPO

APP_SPEC = json.loads((REPO / "apps" / "hello_world" / "spec.json").read_text())
INPUT_URL = "https://example.org/input.txt"


@contextmanager
def serving(app) -> Iterator[str]:
    """The app on a free loopback port, served from a thread (uvicorn installs no signal handlers there)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the stand-in did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@dataclass
class Service:
    url: str
    admin: StandInAdmin
    admin_token: str  # also the signed-in user's sign-in (where the service takes a GitHub token)
    hints: list[dict]  # what was published on the hub, in order
    client_keys: dict[str, str]  # compute client id -> private key

    def call(self, name: str, body: dict, token: str | None = None, scheme: str = "Bearer") -> requests.Response:
        headers = {"Authorization": f"{scheme} {token}"} if token else {}
        return requests.post(f"{self.url}/api/{name}", json={"type": f"{name}Request", **body}, headers=headers,
                             timeout=10)

    def client(self, name: str) -> ServiceClient:
        """A compute client registered through the registration page."""
        code = read_registration_code(self.admin.register_compute_client(SERVICE, name))
        self.client_keys[code.computeClientId] = code.computeClientPrivateKey
        return ServiceClient(self.url, code.computeClientId, code.computeClientPrivateKey, retry_deadline=2)

    def job(self, text: str = "hello", targets: tuple[str, ...] | None = ("*",), **options) -> str:
        """A count_characters job of the signed-in user, targeted at every compute client unless told."""
        definition = {"appName": "hello_world", "processorName": "count_characters",
                      "inputFiles": [{"name": "input", "fileBaseName": "input.txt", "url": f"{INPUT_URL}?{text}"}],
                      "outputFiles": [{"name": "output", "fileBaseName": "output.json"}], "parameters": []}
        targets = list(targets) if targets is not None else None
        return self.admin.create_service_job(SERVICE, definition, target_compute_client_ids=targets, **options)

    def key(self, job_id: str) -> str:
        return self.admin.service_job(job_id)["jobPrivateKey"]

    def hints_for(self, job_id: str) -> list[tuple[str, str | None]]:
        return [(h["type"], h.get("status")) for h in self.hints if h.get("jobId") == job_id]


@pytest.fixture
def service(tmp_path, monkeypatch) -> Iterator[Service]:
    central = build_central(tmp_path / "central")
    hints: list[dict] = []
    publish = central.hub.publish

    def recording(channel: str, message: dict) -> str:
        assert channel == "dendro-compute-clients"
        hints.append(TypeAdapter(PubsubHint).validate_python(message).model_dump(exclude_none=True))
        return publish(channel, message)

    monkeypatch.setattr(central.hub, "publish", recording)
    with serving(create_app(central)) as url:
        admin = StandInAdmin(url, central.admin_token)
        admin.create_service(SERVICE)
        admin.add_service_app(SERVICE, APP_SPEC)
        yield Service(url, admin, central.admin_token, hints, {})


def ids(jobs: list) -> list[str]:
    return [job["jobId"] for job in jobs]


def run_to(client: ServiceClient, service: Service, job_id: str, *statuses: str, error: str | None = None) -> None:
    for status in statuses:
        client.set_job_status(job_id, service.key(job_id), status, error if status == "failed" else None)


# --- requests -------------------------------------------------------------------------------------------------------


def test_requests_must_be_exactly_the_calls_request(service):
    client = service.client("lab")
    job_id = service.job()
    body = {"jobId": job_id, "includePrivateKey": False}
    assert service.call("getJob", body).status_code == 200
    for refused in ({**body, "extra": 1}, {**body, "includePrivateKey": "false"}, {**body, "jobId": 7}):
        answer = service.call("getJob", refused)
        assert (answer.status_code, answer.json()) == (400, {"error": "Invalid request"})
    missing_type = requests.post(f"{service.url}/api/getJob", json=body, timeout=10)
    assert (missing_type.status_code, missing_type.json()) == (400, {"error": "Invalid request"})
    user_key = service.admin.service_user()["apiKey"]
    definition = service.admin.service_job(job_id)["jobDefinition"]
    create = {"serviceName": SERVICE, "userId": "", "batchId": "", "tags": [], "secrets": [], "jobDependencies": [],
              "requiredResources": {"numCpus": 1, "numGpus": 0, "memoryGb": 1, "timeSec": 60}}
    nested_extra = {**create, "jobDefinition": {**definition, "inputFiles": [{**definition["inputFiles"][0], "x": 1}]}}
    assert service.call("createJob", nested_extra, user_key).status_code == 400
    as_text = {**create, "jobDefinition": definition, "requiredResources": {**create["requiredResources"], "numCpus": "1"}}
    assert service.call("createJob", as_text, user_key).status_code == 400
    # the SDK's "Bearer: <key>": the service reads the header's second word
    assert service.call("createJob", {**create, "jobDefinition": definition}, user_key, "Bearer:").status_code == 200
    runnable = service.call("getRunnableJobsForComputeClient", {"computeClientId": client.compute_client_id},
                            "not-the-key")
    assert runnable.status_code == 401
    assert runnable.json() == {"error": "Unauthorized: incorrect or missing compute client private key"}


# --- createJob -----------------------------------------------------------------------------------------------------


def test_job_hash_is_the_services_deterministic_json():
    assert [javascript_number(n) for n in (4, 4.0, 0.5, -2.5, 1e21, 1.23e-7, 0.000001, 123456789012)] == \
        ["4", "4", "0.5", "-2.5", "1e+21", "1.23e-7", "0.000001", "123456789012"]
    assert deterministic_json({"b": [1.0, {"d": None, "c": True}], "a": "é\n"}) == \
        '{"a":"é\\n","b":[1,{"c":true,"d":null}]}'
    definition = {"appName": "a", "processorName": "p", "inputFiles": [], "outputFiles": [],
                  "parameters": [{"name": "b", "value": 2}, {"name": "A", "value": 1}, {"name": "a_1", "value": 1.0}]}
    reordered = {**definition, "parameters": definition["parameters"][::-1]}
    assert job_definition_hash(definition) == job_definition_hash(reordered)
    assert job_definition_hash(definition) != job_definition_hash({**definition, "cacheBust": "x"})


def test_create_job_memoizes_by_definition_unless_told(service):
    first = service.job(tags=("a",))
    assert service.hints_for(first) == [("newPendingJob", None)]
    again = service.job(tags=("a", "b"))
    assert again == first
    assert service.hints_for(first)[-1] == ("jobStatusChanged", "pending")
    assert service.admin.service_job(first)["tags"] == ["a", "b"]
    assert service.job(skip_cache=True) != first
    assert service.job(text="other") != first

    failed = service.job(text="fails")
    client = service.client("lab")
    run_to(client, service, failed, "starting", "failed", error="boom")
    assert service.job(text="fails") == failed  # a failed job is answered too, unless asked to rerun it
    rerun = service.job(text="fails", rerun_failing=True)
    assert rerun != failed and service.admin.service_job(failed)["status"] == "failed"
    run_to(client, service, rerun, "starting", "failed", error="boom again")
    replaced = service.job(text="fails", rerun_failing=True, delete_failing=True)
    assert replaced not in (failed, rerun)
    with pytest.raises(AdminError, match="404"):
        service.admin.service_job(rerun)


def test_create_job_is_checked_against_the_app(service):
    with pytest.raises(AdminError, match="HTTP 400: Job definition is not compatible with app: Required input not "
                                         "found in job definition: input"):
        service.admin.create_service_job(SERVICE, {"appName": "hello_world", "processorName": "count_characters",
                                                   "inputFiles": [], "outputFiles": [], "parameters": []})
    with pytest.raises(AdminError, match="HTTP 400: Service not found: nowhere"):
        service.admin.create_service_job("nowhere", {"appName": "hello_world", "processorName": "hello_world_1",
                                                     "inputFiles": [], "outputFiles": [], "parameters": []})


# --- what compute clients are offered ------------------------------------------------------------------------------


def test_jobs_are_offered_only_to_the_compute_clients_they_target(service):
    lab, other = service.client("lab"), service.client("other")
    untargeted = service.job(text="nobody", targets=None)
    for_lab = service.job(text="lab", targets=(lab.compute_client_id,))
    for_anyone = service.job(text="anyone")
    service.admin.set_compute_slots(lab.compute_client_id, [{"numCpus": 4, "numGpus": 0, "memoryGb": 8,
                                                             "timeSec": 3600, "multiplicity": 10}])
    service.admin.set_compute_slots(other.compute_client_id, [{"numCpus": 4, "numGpus": 0, "memoryGb": 8,
                                                               "timeSec": 3600, "multiplicity": 10}])
    lab_jobs, _ = lab.runnable_jobs()
    other_jobs, _ = other.runnable_jobs()
    assert for_lab in ids(lab_jobs) and for_anyone in ids(lab_jobs) and untargeted not in ids(lab_jobs)
    assert for_anyone in ids(other_jobs) and for_lab not in ids(other_jobs) and untargeted not in ids(other_jobs)
    job = ServiceJob.model_validate(next(j for j in lab_jobs if j["jobId"] == for_lab))
    assert job.jobPrivateKey and job.secrets is None and job.status == "pending" and job.isRunnable


def test_jobs_are_offered_as_far_as_the_compute_slots_reach(service):
    lab = service.client("lab")
    assert service.admin.compute_client(lab.compute_client_id)["computeSlots"] == [
        {"numCpus": 4, "numGpus": 0, "memoryGb": 8, "timeSec": 3600, "minNumCpus": 0, "minNumGpus": 0,
         "minMemoryGb": 0, "minTimeSec": 0, "multiplicity": 1}]
    small = [service.job(text=f"small {i}") for i in range(3)]
    too_big = service.job(text="big", required_resources={"numCpus": 8, "numGpus": 0, "memoryGb": 1, "timeSec": 60})
    offered, running = lab.runnable_jobs()
    assert len(offered) == 1 and ids(offered)[0] in small and running == []  # one slot, newest first
    lab.set_job_status(ids(offered)[0], offered[0]["jobPrivateKey"], "starting")
    offered, running = lab.runnable_jobs()
    assert offered == [] and len(running) == 1
    service.admin.set_compute_slots(lab.compute_client_id, [
        {"numCpus": 2, "numGpus": 0, "memoryGb": 8, "timeSec": 3600, "multiplicity": 2},
        {"numCpus": 16, "numGpus": 0, "memoryGb": 8, "timeSec": 3600, "minNumCpus": 5, "multiplicity": 1}])
    offered, _ = lab.runnable_jobs()
    assert len(offered) == 2 and too_big in ids(offered)  # one small beside the running one, the big one alone
    offered, running = lab.runnable_jobs(job_id=small[0])  # one job asked for: no capacity check, no running jobs
    assert ids(offered) == [small[0]] and running == []


# --- setJobStatus ---------------------------------------------------------------------------------------------------


def test_starting_is_an_atomic_claim_that_one_compute_client_wins(service):
    clients = [service.client("lab"), service.client("other")]
    for attempt in range(4):
        job_id = service.job(text=f"race {attempt}")
        key = service.key(job_id)
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def claim(client: ServiceClient) -> None:
            barrier.wait()
            try:
                client.set_job_status(job_id, key, "starting")
                outcomes.append(f"won {client.compute_client_id}")
            except ClaimRefused:
                outcomes.append("refused")

        threads = [threading.Thread(target=claim, args=(client,)) for client in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert sorted(outcomes)[0].startswith("refused") and sorted(outcomes)[1].startswith("won"), outcomes
        winner = outcomes[0] if outcomes[0].startswith("won") else outcomes[1]
        assert service.admin.service_job(job_id)["computeClientId"] == winner.split()[1]
    job_id = service.job(text="late")
    clients[0].set_job_status(job_id, service.key(job_id), "starting")
    with pytest.raises(ClaimRefused, match="claimed by compute client lab"):
        clients[1].set_job_status(job_id, service.key(job_id), "starting")
    answer = service.call("setJobStatus", {"jobId": job_id, "computeClientId": clients[1].compute_client_id,
                                           "status": "starting"}, service.key(job_id))
    assert answer.json() == {"error": "Mismatch between computeClientId in request and job"}


def test_status_machine_of_a_job(service):
    lab = service.client("lab")
    job_id = service.job()
    key = service.key(job_id)

    def set_status(status: str, error: str | None = None, token: str = key) -> tuple[int, dict]:
        body = {"jobId": job_id, "computeClientId": lab.compute_client_id, "status": status}
        answer = service.call("setJobStatus", {**body, "error": error} if error else body, token)
        return answer.status_code, answer.json()

    assert set_status("running") == (400, {"error": "Trying to set job to a status other than starting when "
                                                    "compute client is not set"})
    assert set_status("starting", token="wrong") == (401, {"error": "Unauthorized: incorrect or missing job private key"})
    assert set_status("starting") == (200, {"type": "setJobStatusResponse"})
    assert set_status("completed") == (400, {"error": "Job is not in running status"})
    assert set_status("failed") == (400, {"error": "Error must be set for failed job"})
    assert set_status("running") == (200, {"type": "setJobStatusResponse"})
    assert set_status("completed", "no") == (400, {"error": "Error should not be set for completed job"})
    assert set_status("completed") == (200, {"type": "setJobStatusResponse"})
    assert set_status("failed", "late") == (400, {"error": "Invalid status for failed job: completed"})
    job = ServiceJob.model_validate(service.admin.service_job(job_id))
    assert job.status == "completed" and job.computeClientName == "lab" and "error" not in job.model_dump(exclude_unset=True)
    assert job.timestampStartingSec <= job.timestampStartedSec <= job.timestampFinishedSec
    assert service.hints_for(job_id) == [("newPendingJob", None), ("jobStatusChanged", "starting"),
                                         ("jobStatusChanged", "running"), ("jobStatusChanged", "completed")]
    assert service.call("setJobStatus", {"jobId": "nope", "computeClientId": "", "status": "starting"},
                        key).status_code == 404


def test_dependants_become_runnable_when_their_dependencies_complete(service):
    lab = service.client("lab")
    service.admin.set_compute_slots(lab.compute_client_id, [{"numCpus": 4, "numGpus": 0, "memoryGb": 8,
                                                             "timeSec": 3600, "multiplicity": 10}])
    first, doomed = service.job(text="first"), service.job(text="doomed")
    after_first = service.job(text="after first", job_dependencies=(first,))
    after_doomed = service.job(text="after doomed", job_dependencies=(doomed,))
    after_nothing = service.job(text="after nothing", job_dependencies=("no-such-job",))
    offered = ids(lab.runnable_jobs()[0])
    assert first in offered and doomed in offered
    assert not {after_first, after_doomed, after_nothing} & set(offered)
    run_to(lab, service, first, "starting", "running")
    assert after_first not in ids(lab.runnable_jobs()[0])
    run_to(lab, service, first, "completed")
    assert after_first in ids(lab.runnable_jobs()[0])
    assert service.hints_for(after_first)[-1] == ("jobStatusChanged", "pending")
    run_to(lab, service, doomed, "starting", "running", "failed", error="boom")
    assert {after_doomed, after_nothing}.isdisjoint(ids(lab.runnable_jobs()[0]))
    assert service.admin.service_job(after_doomed)["isRunnable"] is False


# --- getJob, cancelJob, PubSub --------------------------------------------------------------------------------------


def test_get_job_hides_the_key_but_from_the_client_that_claimed_it(service):
    lab, other = service.client("lab"), service.client("other")
    job_id = service.job()
    assert GetJobResponse.model_validate(service.call("getJob", {"jobId": "nope", "includePrivateKey": False})
                                         .json()).job is None
    assert lab.job(job_id)["jobPrivateKey"] is None and lab.get_job_status(job_id, "") == "pending"
    lab.set_job_status(job_id, service.key(job_id), "starting")
    body = {"jobId": job_id, "includePrivateKey": True, "computeClientId": lab.compute_client_id}
    lab_key, other_key = (service.client_keys[c.compute_client_id] for c in (lab, other))
    with_key = service.call("getJob", body, lab_key).json()["job"]
    assert with_key["jobPrivateKey"] == service.key(job_id) and with_key["secrets"] is None
    assert service.call("getJob", {**body, "computeClientId": other.compute_client_id}, other_key).json() == \
        {"error": "Mismatch between computeClientId in request and job"}
    assert service.call("getJob", body, other_key).json() == {"error": "Unauthorized"}


def test_cancel_job_only_marks_it(service):
    lab = service.client("lab")
    job_id = service.job()
    user_key = service.admin.service_user()["apiKey"]
    assert service.call("cancelJob", {"jobId": job_id}, "wrong").status_code == 401
    assert service.call("cancelJob", {"jobId": "nope"}, user_key).status_code == 404
    assert service.call("cancelJob", {"jobId": job_id}, user_key).json() == {"type": "cancelJobResponse"}
    job = lab.job(job_id)
    assert job["canceled"] is True and job["status"] == "pending"
    assert job_id in ids(lab.runnable_jobs()[0])  # still offered: compute clients must honour `canceled`
    assert service.hints_for(job_id) == [("newPendingJob", None)]
    run_to(lab, service, job_id, "starting", "running", "completed")
    assert service.call("cancelJob", {"jobId": job_id}, user_key).json() == {"error": "Job is already completed or failed"}


def test_pubsub_subscription_and_ping(service):
    lab = service.client("lab")
    subscription = lab.pubsub_subscription()
    assert (subscription.pubnubChannel, subscription.pubnubUser) == ("dendro-compute-clients", lab.compute_client_id)
    assert subscription.pubnubSubscribeKey == "sub-c-dendro-standin"
    lab_key = service.client_keys[lab.compute_client_id]
    GetPubsubSubscriptionResponse.model_validate(service.call(
        "getPubsubSubscription", {"computeClientId": lab.compute_client_id}, lab_key).json())
    assert service.call("getPubsubSubscription", {"computeClientId": lab.compute_client_id,
                                                  "protocolVersion": "2"}, lab_key).status_code == 400
    assert service.call("pingComputeClients", {"serviceName": SERVICE}).json() == {"type": "pingComputeClientsResponse"}
    assert service.hints[-1] == {"type": "pingComputeClients", "serviceName": SERVICE}


def test_registration_page_registers_a_client_of_the_signed_in_user(service):
    page = requests.get(f"{service.url}/register_compute_client/{SERVICE}/lab", timeout=10)
    assert page.status_code == 200 and "Register compute client" in page.text
    code = read_registration_code(service.admin.register_compute_client(SERVICE, "lab"))
    client = service.admin.compute_client(code.computeClientId)
    assert (client["computeClientName"], client["serviceNames"], client["userId"]) == \
        ("lab", [SERVICE], service.admin.service_user()["userId"])
    body = {"serviceNames": [SERVICE], "computeClientName": "x", "userId": client["userId"]}
    assert service.call("createComputeClient", body, "not-signed-in").status_code == 401
    assert service.call("createComputeClient", body, service.admin_token).ok
    app = ServiceClient(service.url, code.computeClientId, code.computeClientPrivateKey).service_app(SERVICE,
                                                                                                     "hello_world")
    assert app.appSpecification.processor("count_characters").executable == "main.py"


# --- a running job's files ----------------------------------------------------------------------------------------


def test_job_files_upload_to_signed_urls_and_download_from_public_ones(service, monkeypatch):
    lab = service.client("lab")
    job_id = service.job()
    key = service.key(job_id)
    run_to(lab, service, job_id, "starting", "running")

    def upload_url(upload_type: str, size: int, **names) -> GetSignedUploadUrlResponse:
        answer = service.call("getSignedUploadUrl", {"jobId": job_id, "uploadType": upload_type, "size": size, **names},
                              key)
        assert answer.ok, answer.text
        return GetSignedUploadUrlResponse.model_validate(answer.json())

    output = upload_url("output", 17, outputName="output")
    assert requests.put(output.signedUrl, data=b'{"num_characters"', timeout=10).ok
    assert requests.get(output.downloadUrl, timeout=10).content == b'{"num_characters"'
    job = service.admin.service_job(job_id)
    assert job["outputFileResults"][0] == {"name": "output", "fileBaseName": "output.json",
                                           "url": output.downloadUrl, "size": 17}
    console = upload_url("consoleOutput", 2)
    assert console.downloadUrl == job["consoleOutputUrl"]
    assert upload_url("other", 1, otherName="plots/a.png").downloadUrl.endswith("/other/plots/a.png")
    again = service.call("getSignedUploadUrl", {"jobId": job_id, "uploadType": "other", "size": 1,
                                                "otherName": "plots/a.png"}, key)
    assert again.json() == {"error": "Other file already exists"}

    monkeypatch.setattr(files, "PART_SIZE", 4)  # a multipart upload without a gigabyte
    multipart = upload_url("output", 10, outputName="output")
    assert [part.partNumber for part in multipart.parts] == [1, 2, 3]
    uploaded = []
    for part, chunk in zip(multipart.parts, (b"0123", b"4567", b"89")):
        answer = requests.put(part.signedUrl, data=chunk, timeout=10)
        uploaded.append({"PartNumber": part.partNumber, "ETag": answer.headers["ETag"]})
    finalize = {"jobId": job_id, "url": multipart.downloadUrl, "size": 10, "uploadId": multipart.uploadId}
    assert service.call("finalizeMultipartUpload", {**finalize, "parts": uploaded[:2]}, key).status_code == 500
    assert service.call("finalizeMultipartUpload", {**finalize, "parts": uploaded}, key).ok
    assert requests.get(multipart.downloadUrl, timeout=10).content == b"0123456789"

    download = service.call("getSignedDownloadUrl", {"jobId": job_id, "url": f"{INPUT_URL}?hello"}, key).json()
    assert download == {"type": "getSignedDownloadUrlResponse", "signedUrl": f"{INPUT_URL}?hello"}
    assert service.call("getSignedDownloadUrl", {"jobId": job_id, "url": "https://elsewhere"}, key).status_code == 500
    runtime = service.call("setOutputFileUrl", {"jobId": job_id, "outputName": "output", "url": "https://x"}, key)
    assert runtime.json() == {"error": "Output url is not determined at run time"}


def test_runnable_jobs_answer_parses_as_the_client_reads_it(service):
    lab = service.client("lab")
    service.job()
    answer = service.call("getRunnableJobsForComputeClient", {"computeClientId": lab.compute_client_id},
                          service.client_keys[lab.compute_client_id])
    parsed = GetRunnableJobsForComputeClientResponse.model_validate(answer.json())
    assert len(parsed.runnableJobs) == 1 and parsed.runningJobs == []
