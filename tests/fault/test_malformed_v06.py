"""Fuzzing of Dendro 0.6's PubSub hints and jobs, as test_malformed_input.py does it for 0.2's: whatever arrives on
the shared `dendro-compute-clients` channel, the controller never raises, drops (and logs) every malformed hint and
keeps exactly the well-formed ones of its own service (the oracle is independent of the models); whatever job
documents the service offers, intake never raises, fails what cannot run and runs the rest once."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any
from uuid import uuid4

from hypothesis import given, settings
from hypothesis import strategies as st

from dendro_prefect.config import ComputeClientConfig
from dendro_prefect.controller.job_hints import JobHints
from dendro_prefect.controller.routing import DEFAULT_DEPLOYMENTS
from dendro_prefect.controller.v06 import ComputeClientController
from dendro_prefect.protocol.transport import CentralError
from dendro_prefect.protocol.v06.models import PubsubSubscription, ServiceApp
from tests.conftest import REPO
from tests.fault.test_malformed_input import FUZZ, JSON, NOT_OBJECT, NOT_STR, UNIQUE, PubsubWire, Records, messages
from tests.unit.fakes import FakePrefect

OWN_SERVICE = "hello_world_service"
WIRE_06 = PubsubWire({"newPendingJob": ("serviceName", "jobId"), "jobStatusChanged": ("serviceName", "jobId"),
                      "pingComputeClients": ("serviceName",)}, "serviceName", OWN_SERVICE,
                     ("pending", "starting", "running", "completed", "failed"),
                     ("", "newpendingjob", "pingComputeClient", "computeResourceAppsChanaged", "jobStatusChanged "))


def test_malformed_hints_are_dropped_and_well_formed_ones_of_the_service_kept():
    config = ComputeClientConfig(compute_client_id="c1", compute_client_private_key="k" * 32, compute_client_name="n",
                                 service_name=OWN_SERVICE, central_url="http://service.invalid")
    controller = ComputeClientController(config, dict(DEFAULT_DEPLOYMENTS), logging.getLogger("fuzz.v06"))
    subscription = PubsubSubscription(pubnubSubscribeKey="mock-subscribe-key", pubnubChannel="dendro-compute-clients",
                                      pubnubUser="c1")
    counts: Counter = Counter()
    loop = asyncio.new_event_loop()

    @settings(FUZZ, max_examples=200)
    @given(st.lists(messages(WIRE_06), min_size=4, max_size=12))
    def receive(documents: list) -> None:
        log = Records(f"fuzz.hints.{next(UNIQUE)}")
        job_hints = JobHints(subscription, controller.keep_message, log.logger)
        for document in documents:
            job_hints.receive(document)  # never raises
        kept = loop.run_until_complete(job_hints.wait(0))
        expected = [d for d in documents if WIRE_06.well_formed(d) and d["serviceName"] == OWN_SERVICE]
        assert [(h.type, h.serviceName, getattr(h, "jobId", None)) for h in kept] == \
            [(d["type"], d["serviceName"], d.get("jobId")) for d in expected]
        malformed = [d for d in documents if not WIRE_06.well_formed(d)]
        warnings = log.messages()
        assert len(warnings) == len(malformed) and all(w.startswith("malformed PubSub message") for w in warnings)
        counts.update(generated=len(documents), malformed=len(malformed), kept=len(expected))

    try:
        receive()
    finally:
        loop.close()
    print(f"\n0.6 hints: {counts['generated']} generated, {counts['malformed']} malformed (all dropped), "
          f"{counts['kept']} well-formed for this service (all kept)")
    assert counts["malformed"] >= 500 and counts["kept"] >= 80


# --- jobs -----------------------------------------------------------------------------------------------------------


class FakeService:
    """The service as `ServiceClient` answers the controller: the runnable jobs (any documents), the hello_world app,
    and the status changes asked (a claim of a pending job, then its failure)."""

    def __init__(self, documents: list) -> None:
        self.documents = documents
        self.changes: list[tuple[str, str, str | None]] = []

    def runnable_jobs(self, job_id: str | None = None) -> tuple[list, list]:
        return (list(self.documents), []) if job_id is None else ([], [])

    def job(self, job_id: str, **_: Any) -> dict | None:
        return None

    def service_app(self, service_name: str, app_name: str) -> ServiceApp:
        if app_name != "hello_world":
            raise CentralError("POST /api/getServiceApp: HTTP 404: App not found", 404)
        return ServiceApp(serviceName=service_name, appName=app_name, appSpecificationUri="", appSpecificationCommit="",
                          appSpecification=json.loads((REPO / "apps" / "hello_world" / "spec.json").read_text()))

    def set_job_status(self, job_id: str, job_private_key: str, status: str, error: str | None = None, **_: Any):
        self.changes.append((job_id, status, error))


def good_service_job(n: int) -> dict:
    return {"jobId": f"job{n}", "jobPrivateKey": f"key{n:029d}", "serviceName": OWN_SERVICE, "userId": "github|1",
            "batchId": "", "tags": [], "jobDefinitionHash": "h", "jobDependencies": [],
            "jobDefinition": {"appName": "hello_world", "processorName": "count_characters",
                              "inputFiles": [{"name": "input", "fileBaseName": "a.txt", "url": "https://x/a.txt"}],
                              "outputFiles": [{"name": "output", "fileBaseName": "output.json"}], "parameters": []},
            "requiredResources": {"numCpus": 1, "numGpus": 0, "memoryGb": 1, "timeSec": 60},
            "outputFileResults": [], "consoleOutputUrl": "", "timestampCreatedSec": 1.0, "canceled": False,
            "status": "pending", "isRunnable": True, "computeClientId": None}


JOB_PATHS = [("jobDefinition",), ("jobDefinition", "appName"), ("jobDefinition", "processorName"),
             ("jobDefinition", "inputFiles"), ("requiredResources",), ("requiredResources", "timeSec"),
             ("requiredResources", "numCpus"), ("canceled",), ("isRunnable",), ("serviceName",), ("status",),
             ("timestampCreatedSec",), ("jobDependencies",), ("tags",)]


@st.composite
def service_job_documents(draw) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(NOT_OBJECT)
    document = good_service_job(next(UNIQUE))
    for path in draw(st.lists(st.sampled_from(JOB_PATHS), max_size=3)):
        *parents, last = path
        target = document
        for name in parents:
            target = target.get(name) if isinstance(target, dict) else None
        if isinstance(target, dict):
            if draw(st.booleans()):
                target.pop(last, None)
            else:
                target[last] = draw(JSON | st.sampled_from(["", "other_app", -1, None]))
    if draw(st.integers(0, 5)) == 0:
        document[draw(st.sampled_from(["jobId", "jobPrivateKey"]))] = draw(NOT_STR)
    return document


def test_malformed_jobs_are_claimed_and_failed_and_good_jobs_get_one_flow_run():
    """Whatever the runnable jobs hold, intake never raises; a job that cannot run (malformed, an unknown app or
    processor) is claimed and failed with a one-line reason, as the service takes a failure only from its client;
    every other pending job gets one flow run; a document without an id and a key is logged."""
    counts: Counter = Counter()

    @settings(FUZZ, max_examples=60)
    @given(st.lists(service_job_documents(), min_size=3, max_size=10))
    def intake(documents: list) -> None:
        good = good_service_job(next(UNIQUE))
        documents = [*documents, good]
        log = Records(f"fuzz.v06.jobs.{next(UNIQUE)}")
        config = ComputeClientConfig(compute_client_id="c1", compute_client_private_key="k" * 32,
                                     compute_client_name="n", service_name=OWN_SERVICE,
                                     central_url="http://service.invalid")
        controller = ComputeClientController(config, dict(DEFAULT_DEPLOYMENTS), log.logger, settle_sec=3600)
        service = controller.central = controller.jobs.client = FakeService(documents)
        prefect = FakePrefect()
        prefect.deployments[DEFAULT_DEPLOYMENTS["local"]] = uuid4()
        asyncio.run(controller.intake(prefect))
        runs = Counter(run.idempotency_key for run in prefect.created)
        failed = {job_id: error for job_id, status, error in service.changes if status == "failed"}
        claimed = [job_id for job_id, status, _ in service.changes if status == "starting"]
        assert runs[good["jobId"]] == 1 and good["jobId"] not in failed
        usable = {d["jobId"]: d for d in documents if isinstance(d, dict) and isinstance(d.get("jobId"), str)
                  and isinstance(d.get("jobPrivateKey"), str)}
        for job_id, error in failed.items():
            assert error and "\n" not in error and runs[job_id] == 0
            # A pending job is claimed first (a starting or running one is this client's already).
            assert job_id in claimed or usable[job_id].get("status") != "pending"
        assert set(claimed) <= set(failed)
        ids_seen = set(usable)
        assert set(runs) | set(failed) <= ids_seen
        counts.update(documents=len(documents), runs=sum(runs.values()), failed=len(failed))

    intake()
    print(f"\n0.6 jobs: {counts['documents']} documents, {counts['runs']} flow runs, {counts['failed']} failed")
    assert counts["failed"] >= 50 and counts["runs"] >= 60
