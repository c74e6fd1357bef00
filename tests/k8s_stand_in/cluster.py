"""The whole stand-in cluster in one object: the store, the create verb (validate, default, store), the node agent,
the Job controller and the garbage collector, driven by one control loop ten times a second."""

from __future__ import annotations

import asyncio
import logging
import time

from .defaults import DEFAULTERS, prepare_metadata
from .errors import ApiError, bad_request, not_found
from .events import EventRecorder
from .garbage_collector import GarbageCollector
from .job_controller import JobController
from .kubelet import Kubelet
from .node import node_object
from .options import Options
from .process import kill_leftovers
from .resources import RESOURCES
from .store import Store
from .validation import validate

log = logging.getLogger(__name__)
TICK_SECONDS = 0.1


class Cluster:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.store = Store()
        self.recorder = EventRecorder(self.store)
        self.gc = GarbageCollector(self.store)
        self.kubelet = Kubelet(self.store, self.recorder, options)
        self.jobs = JobController(self.store, self.recorder, self.gc)
        for name in ("kube-system", "default", "kube-public"):
            self.create_object("namespaces", None, {"metadata": {"name": name}})
        self.store.create("nodes", node_object(options))

    def create_object(self, plural: str, namespace: str | None, body: object) -> dict:
        """The create verb: 404 for a missing namespace, 400/422 for bad bodies, 409 for a taken name."""
        res = RESOURCES[plural]
        if not isinstance(body, dict):
            raise bad_request("the body of the request was in an unknown format")
        if body.get("kind") not in (None, res.kind) or body.get("apiVersion") not in (None, res.api_version):
            raise bad_request(f"the API version in the data ({body.get('apiVersion')}) does not match the expected "
                              f"API version ({res.api_version})")
        if namespace is not None and self.store.get("namespaces", "", namespace) is None:
            raise not_found("namespaces", namespace)
        body_namespace = (body.get("metadata") or {}).get("namespace")
        if namespace is not None and body_namespace not in (None, "", namespace):
            raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
        prepare_metadata(body, namespace)
        validate(res, body)
        body.update(kind=res.kind, apiVersion=res.api_version)
        if plural in DEFAULTERS:
            DEFAULTERS[plural](body)
        return self.store.create(plural, body)

    def namespace_uid(self, name: str) -> str:
        return self.store.require("namespaces", "", name)["metadata"]["uid"]

    def tick(self) -> None:
        now = time.time()
        for step in (self.kubelet.sync, self.jobs.sync):
            try:
                step(now)
            except ApiError as error:
                log.warning("control loop: %s", error)
            except Exception:
                log.exception("control loop step failed")
        try:
            self.gc.sync()
        except Exception:
            log.exception("garbage collector failed")

    async def run(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(TICK_SECONDS)

    def shutdown(self) -> None:
        self.kubelet.shutdown()
        kill_leftovers(self.kubelet.pid_dir)
