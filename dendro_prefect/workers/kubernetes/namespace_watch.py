"""The worker's view of its Jobs and Pods in a namespace, kept current by the Kubernetes watch API
(one list, then a stream of changes; after 410 Gone it lists again), so that a poll of all watched
jobs costs no API call at all."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from .manifest import MANAGED_BY

logger = logging.getLogger(__name__)
SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
RETRY_SEC = 1.0


class ResourceCache:
    """Objects of one kind by name, from a thread that lists them and then follows their changes from
    the list's resourceVersion. A broken stream resumes from the last version seen; one the server no
    longer has (410 Gone: it compacted its history) makes it list again."""

    def __init__(self, list_function: Callable, namespace: str, what: str, watch_timeout_sec: int = 300) -> None:
        self._list = list_function
        self._namespace = namespace
        self._what = what
        self._watch_timeout_sec = watch_timeout_sec
        self._objects: dict[str, object] = {}
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread: threading.Thread | None = None
        self.resource_version: str | None = None
        self.lists = 0  # the first, and one after each 410 Gone

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"watch {self._what} {self._namespace}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        if self._thread is not None:
            self._thread.join(self._watch_timeout_sec + 5)

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def get(self, name: str):
        return self._objects.get(name)

    def values(self) -> list:
        return list(self._objects.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    listed = self._list(self._namespace, label_selector=SELECTOR)
                    self.lists += 1
                    self._objects = {o.metadata.name: o for o in listed.items}
                    self.resource_version = listed.metadata.resource_version
                    self._synced.set()
                self._stream()
            except ApiException as error:
                if error.status == 410:
                    self.resource_version = None
                else:
                    logger.warning("Watching %s in %s failed (%s %s); resuming", self._what, self._namespace,
                                   error.status, error.reason)
                    time.sleep(RETRY_SEC)
            except Exception as error:  # a broken connection: resume, never give up
                if not self._stop.is_set():
                    logger.warning("Watching %s in %s failed (%s); resuming", self._what, self._namespace, error)
                    time.sleep(RETRY_SEC)

    def _stream(self) -> None:
        """Apply changes from `resource_version` on, until stopped; 410 Gone raises (the client raises
        it for an ERROR event with code 410; an ERROR event of another kind is treated alike)."""
        while not self._stop.is_set():
            self._watch = watch.Watch()
            for event in self._watch.stream(self._list, self._namespace, label_selector=SELECTOR,
                                            resource_version=self.resource_version,
                                            timeout_seconds=self._watch_timeout_sec):
                kind, item = event["type"], event["object"]
                if kind == "ERROR":
                    raise ApiException(status=410, reason="Gone")
                if kind == "DELETED":
                    self._objects.pop(item.metadata.name, None)
                else:
                    self._objects[item.metadata.name] = item
                self.resource_version = item.metadata.resource_version or self.resource_version


class NamespaceWatch:
    """The Jobs and Pods of dendro-prefect in one namespace."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.jobs = ResourceCache(client.BatchV1Api(api).list_namespaced_job, namespace, "jobs")
        self.pods = ResourceCache(client.CoreV1Api(api).list_namespaced_pod, namespace, "pods")

    def start(self, timeout: float = 30.0) -> None:
        self.jobs.start()
        self.pods.start()
        self.jobs.wait_synced(timeout)
        self.pods.wait_synced(timeout)

    def stop(self) -> None:
        self.jobs.stop()
        self.pods.stop()

    def pods_of(self, job_name: str) -> list:
        """The job's pods, newest first."""
        pods = [p for p in self.pods.values() if (p.metadata.labels or {}).get("job-name") == job_name]
        return sorted(pods, key=lambda p: p.metadata.creation_timestamp or 0, reverse=True)
