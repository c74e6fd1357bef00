"""Dendro jobs as Kubernetes Jobs, through the official client.

Each attempt of a Dendro job is one `batch/v1` Job (backoffLimit 0) with its key in a Secret that the
Job owns. States come from the namespace's watch caches, not from a call per job. Pod logs are followed
into the flow-run log. A pod Pending too long gets its events written to the log and, past a limit,
fails the job with them; an evicted pod is retried as a new Job a bounded number of times.

Infrastructure id: `kubernetes:<cluster id>:<namespace>:<job name of the first attempt>`.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from ..launch import InfrastructureState, Launcher, LaunchError, LaunchRequest, one_line
from .cluster import ClusterAccess, cluster_identity
from .manifest import ATTEMPT_LABEL, JOB_ID_LABEL, job_labels, job_secret, render_job
from .namespace_watch import NamespaceWatch
from .settings import KubernetesLauncherSettings

IMAGE_ERRORS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
CONFIG_ERRORS = frozenset({"CreateContainerConfigError", "CreateContainerError"})
# A Job just created reaches the namespace watch a moment later; not there after this long, it is gone.
UNSEEN_LIMIT_SEC = 60.0
# The Jobs and the Pods come from two watches: a Job's Failed may arrive before its pod's end (evicted, say);
# while its pod still looks alive, the end waits this long for the pod's side.
POD_CATCH_UP_SEC = 10.0


@dataclass
class _Watched:
    namespace: str
    request: LaunchRequest
    attempts: list[str] = field(default_factory=list)  # Job names, the current last
    pending_since: float | None = None
    events_seen: set = field(default_factory=set)
    lines: queue.Queue = field(default_factory=queue.Queue)
    follower: threading.Thread | None = None
    following_pod: str | None = None
    pod: Any = None  # the current attempt's pod, as the last states() saw it
    ended: bool = False  # the last states() saw the job end
    created_at: float = field(default_factory=time.monotonic)  # of the current attempt's Job
    failed_seen_at: float | None = None  # when the current attempt's Job was first seen Failed
    # The attempts' Jobs the namespace watch has shown, by name: states() may run (another thread) while run_again
    # makes a new attempt current, so whether the current one was seen is kept with its name.
    seen: set = field(default_factory=set)


def _api_error(what: str, error: ApiException) -> LaunchError:
    return LaunchError(f"Kubernetes {what} failed: {error.status} {error.reason}")


class KubernetesLauncher(Launcher):
    def __init__(self, settings: KubernetesLauncherSettings, access: ClusterAccess | None = None) -> None:
        self.settings = settings
        self._access = access or ClusterAccess(settings.cluster_config_block, settings.kubeconfig_path,
                                               settings.context)
        self._api: client.ApiClient | None = None
        self._cluster: str | None = None
        self._watches: dict[str, NamespaceWatch] = {}
        self._watched: dict[str, _Watched] = {}
        self._lock = threading.Lock()

    # --- clients, blocking ---------------------------------------------------------------------------------------

    def _client(self) -> client.ApiClient:
        with self._lock:
            if self._api is None:
                api = self._access.api_client()
                try:
                    self._cluster = cluster_identity(api)
                except ApiException as error:
                    raise _api_error("reading the cluster's identity", error) from None
                self._api = api
            return self._api

    def _watch(self, namespace: str) -> NamespaceWatch:
        api = self._client()
        with self._lock:
            if namespace not in self._watches:
                self._watches[namespace] = NamespaceWatch(api, namespace)
                self._watches[namespace].start()
            return self._watches[namespace]

    # --- submit --------------------------------------------------------------------------------------------------

    async def submit(self, request: LaunchRequest) -> str:
        return await asyncio.to_thread(self._submit, request)

    def _submit(self, request: LaunchRequest) -> str:
        try:
            manifest = render_job(self.settings.job_manifest, request, 0,
                                  self.settings.infrastructure_time_limit(request.time_limit_sec))
        except ValueError as error:
            raise LaunchError(str(error)) from None
        namespace = manifest["metadata"]["namespace"]
        self._watch(namespace)
        self._create(manifest, request, 0)
        infrastructure_id = f"kubernetes:{self._cluster}:{namespace}:{manifest['metadata']['name']}"
        self._watched[infrastructure_id] = _Watched(namespace, request, [manifest["metadata"]["name"]])
        return infrastructure_id

    def _create(self, manifest: dict, request: LaunchRequest, attempt: int) -> None:
        """The Job, then its Secret, owned by the Job from birth so that it never outlives it. A pod
        that starts before the Secret exists waits for it (the kubelet retries)."""
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        core, batch = client.CoreV1Api(self._api), client.BatchV1Api(self._api)
        try:
            job = batch.create_namespaced_job(namespace, manifest)
        except ApiException as error:
            detail = one_line(getattr(error, "body", "") or "")
            raise LaunchError(f"Kubernetes refused the Job: {error.status} {error.reason} {detail}".strip()) from None
        secret = job_secret(request, name, namespace, job_labels(request, attempt))
        secret["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                                  "uid": job.metadata.uid, "blockOwnerDeletion": True}]
        try:
            core.create_namespaced_secret(namespace, secret)
        except ApiException as error:
            self._delete_job(namespace, name)
            raise _api_error("creating the job's Secret", error) from None

    def _delete_secret(self, namespace: str, name: str) -> None:
        try:
            client.CoreV1Api(self._api).delete_namespaced_secret(f"{name}-key", namespace)
        except ApiException as error:
            if error.status != 404:
                raise _api_error("deleting the job's Secret", error) from None

    async def attach(self, infrastructure_id: str, request: LaunchRequest) -> None:
        await asyncio.to_thread(self._attach, infrastructure_id, request)

    def _attach(self, infrastructure_id: str, request: LaunchRequest) -> None:
        _, cluster, namespace, name = infrastructure_id.split(":", 3)
        self._client()
        if cluster != self._cluster:
            raise LaunchError(f"job {name} runs on cluster {cluster}, this worker reaches cluster {self._cluster}")
        jobs = client.BatchV1Api(self._api).list_namespaced_job(
            namespace, label_selector=f"{JOB_ID_LABEL}={request.job_id}").items
        attempts = [j.metadata.name for j in sorted(jobs, key=lambda j: int((j.metadata.labels or {})
                                                                             .get(ATTEMPT_LABEL, "0")))]
        self._watch(namespace)
        self._watched[infrastructure_id] = _Watched(namespace, request, attempts or [name])

    # --- watch ---------------------------------------------------------------------------------------------------

    async def states(self, infrastructure_ids: list[str]) -> dict[str, InfrastructureState]:
        return await asyncio.to_thread(lambda: {i: self._state(i) for i in infrastructure_ids})

    def _state(self, infrastructure_id: str) -> InfrastructureState:
        state = self._observe(infrastructure_id)
        watched = self._watched.get(infrastructure_id)
        if watched is not None:
            watched.ended = state.phase != "running"
        return state

    def _observe(self, infrastructure_id: str) -> InfrastructureState:
        watched = self._watched.get(infrastructure_id)
        if watched is None:
            return InfrastructureState("gone", reason="the worker does not know this Kubernetes job")
        namespace_watch = self._watch(watched.namespace)
        name = watched.attempts[-1]
        job = namespace_watch.jobs.get(name)
        pods = namespace_watch.pods_of(name)
        pod = watched.pod = pods[0] if pods else None
        if job is None:
            if name not in watched.seen and time.monotonic() - watched.created_at < UNSEEN_LIMIT_SEC:
                return InfrastructureState("running")  # created, not in the watch's view yet
            return InfrastructureState("gone", reason=f"Job {watched.namespace}/{name} no longer exists")
        watched.seen.add(name)
        if pod is not None and (pod.status.reason == "Evicted"):
            return InfrastructureState("lost", None, f"Kubernetes: pod {pod.metadata.name} evicted "
                                       f"({one_line(pod.status.message)})", attempt=len(watched.attempts))
        conditions = {c.type: c for c in (job.status.conditions or []) if c.status == "True"}
        if "Complete" in conditions:
            return InfrastructureState("exited", _exit_code(pod) or 0)
        if "Failed" in conditions:
            watched.failed_seen_at = watched.failed_seen_at or time.monotonic()
            if (pod is not None and pod.status.phase in ("Pending", "Running")
                    and time.monotonic() - watched.failed_seen_at < POD_CATCH_UP_SEC):
                return InfrastructureState("running")  # the pod's end (its reason) has not reached its watch yet
            return InfrastructureState("exited", _exit_code(pod), _failure_reason(conditions["Failed"], pod))
        if pod is not None and pod.status.phase == "Pending":
            return self._pending(watched, pod)
        watched.pending_since = None
        return InfrastructureState("running")

    def _pending(self, watched: _Watched, pod: Any) -> InfrastructureState:
        """Say why a pod waits (its events) once it waited `pending_warning_sec`; fail it past the limit,
        or at once for an error that waiting does not cure (an image that cannot be pulled)."""
        now = time.monotonic()
        watched.pending_since = watched.pending_since or now
        waited = now - watched.pending_since
        waiting = _waiting_reason(pod)
        if waited < self.settings.pending_warning_sec:
            return InfrastructureState("running")
        reasons = self._report_events(watched, pod)
        if waiting in IMAGE_ERRORS | CONFIG_ERRORS or waited >= self.settings.pending_limit_sec:
            cause = f"{waiting}: {one_line(_waiting_message(pod))}" if waiting else (reasons[-1] if reasons
                                                                                       else "no event says why")
            return InfrastructureState("exited", None, f"Kubernetes: pod Pending for {waited:.0f} s ({cause})")
        return InfrastructureState("running")

    def _report_events(self, watched: _Watched, pod: Any) -> list[str]:
        try:
            events = client.CoreV1Api(self._api).list_namespaced_event(
                watched.namespace, field_selector=f"involvedObject.name={pod.metadata.name}").items
        except ApiException:
            return []
        reasons = []
        for event in events:
            if event.type == "Warning" or event.reason in ("FailedScheduling", "Failed", "BackOff"):
                line = f"{event.reason}: {one_line(event.message)}"
                reasons.append(line)
                if line not in watched.events_seen:
                    watched.events_seen.add(line)
                    watched.lines.put(f"Kubernetes event on pod {pod.metadata.name}: {line}")
        return reasons

    async def run_again(self, infrastructure_id: str) -> None:
        await asyncio.to_thread(self._run_again, infrastructure_id)

    def _run_again(self, infrastructure_id: str) -> None:
        """A new Job (`-r<attempt>`) in place of the one whose pod was evicted: created and made the current
        attempt before the old one is deleted, so that a states() meanwhile (another thread) sees either."""
        watched = self._watched[infrastructure_id]
        attempt, evicted = len(watched.attempts), watched.attempts[-1]
        manifest = render_job(self.settings.job_manifest, watched.request, attempt,
                              self.settings.infrastructure_time_limit(watched.request.time_limit_sec))
        self._create(manifest, watched.request, attempt)
        watched.created_at, watched.pending_since, watched.failed_seen_at = time.monotonic(), None, None
        watched.attempts.append(manifest["metadata"]["name"])
        self._delete_job(watched.namespace, evicted)

    # --- logs ----------------------------------------------------------------------------------------------------

    def _follow_logs(self, watched: _Watched, pod: Any) -> None:
        """Stream the pod's log into the job's lines from a thread, once the container has started."""
        if watched.following_pod == pod.metadata.name or pod.status.phase == "Pending":
            return
        watched.following_pod = pod.metadata.name
        watched.follower = threading.Thread(target=self._stream_log, args=(watched, pod.metadata.name), daemon=True)
        watched.follower.start()

    def _stream_log(self, watched: _Watched, pod_name: str) -> None:
        try:
            response = client.CoreV1Api(self._api).read_namespaced_pod_log(
                pod_name, watched.namespace, follow=True, _preload_content=False)
            for line in response.stream():
                for text in line.decode(errors="replace").splitlines():
                    watched.lines.put(text)
        except ApiException as error:
            watched.lines.put(f"Kubernetes: cannot read the log of pod {pod_name}: {error.status} {error.reason}")
        except Exception:  # the pod went away with its log: nothing more to read
            pass

    async def read_logs(self, infrastructure_id: str) -> list[str]:
        """The pod's log, streamed from a thread once its container started; once the job ended, the stream's
        last lines are waited for (a few seconds) before the worker reads them for the last time."""
        watched = self._watched.get(infrastructure_id)
        if watched is None:
            return []
        if watched.pod is not None:
            self._follow_logs(watched, watched.pod)
        if watched.ended and watched.follower is not None:
            await asyncio.to_thread(watched.follower.join, 3)
        lines = []
        while not watched.lines.empty():
            lines.append(watched.lines.get_nowait())
        return lines

    async def ended_output(self, infrastructure_id: str, job_id: str) -> list[str]:
        return await asyncio.to_thread(self._ended_output, infrastructure_id, job_id)

    def _ended_output(self, infrastructure_id: str, job_id: str) -> list[str]:
        """The log of the job's latest pod (of its latest attempt), while Kubernetes keeps it."""
        namespace = infrastructure_id.split(":", 3)[2]
        core = client.CoreV1Api(self._client())
        try:
            pods = core.list_namespaced_pod(namespace, label_selector=f"{JOB_ID_LABEL}={job_id}").items
            if not pods:
                return []
            latest = max(pods, key=lambda p: (int((p.metadata.labels or {}).get(ATTEMPT_LABEL, "0")), p.metadata.name))
            return core.read_namespaced_pod_log(latest.metadata.name, namespace).splitlines()
        except ApiException as error:
            raise _api_error("reading the log of an ended job", error) from None

    # --- kill and release ----------------------------------------------------------------------------------------

    async def kill(self, infrastructure_id: str) -> None:
        watched = self._watched.get(infrastructure_id)
        if watched is not None:
            await asyncio.to_thread(self._delete_job, watched.namespace, watched.attempts[-1])

    def _delete_job(self, namespace: str, name: str) -> None:
        """Foreground deletion: the pods go first; the Secret goes with the Job (and is deleted here
        too, should the cluster's garbage collector be slow)."""
        try:
            client.BatchV1Api(self._api).delete_namespaced_job(
                name, namespace, body=client.V1DeleteOptions(propagation_policy="Foreground"))
        except ApiException as error:
            if error.status != 404:
                raise _api_error("deleting the Job", error) from None
        self._delete_secret(namespace, name)

    async def release(self, infrastructure_id: str) -> None:
        """The job ended and its log was read: remove its Jobs and Secrets (ttlSecondsAfterFinished is
        the backstop for a worker that is gone)."""
        watched = self._watched.pop(infrastructure_id, None)
        if watched is not None:
            if watched.follower is not None:
                await asyncio.to_thread(watched.follower.join, 5)
            for name in watched.attempts:
                await asyncio.to_thread(self._delete_job, watched.namespace, name)


def _container_status(pod: Any):
    statuses = (pod.status.container_statuses or []) if pod is not None and pod.status else []
    return statuses[0] if statuses else None


def _exit_code(pod: Any) -> int | None:
    status = _container_status(pod)
    terminated = status.state.terminated if status is not None and status.state else None
    return terminated.exit_code if terminated is not None else None


def _waiting_reason(pod: Any) -> str | None:
    status = _container_status(pod)
    waiting = status.state.waiting if status is not None and status.state else None
    return waiting.reason if waiting is not None else None


def _waiting_message(pod: Any) -> str:
    status = _container_status(pod)
    waiting = status.state.waiting if status is not None and status.state else None
    return (waiting.message or "") if waiting is not None else ""


def _failure_reason(condition: Any, pod: Any) -> str:
    status = _container_status(pod)
    terminated = status.state.terminated if status is not None and status.state else None
    if terminated is not None and terminated.reason == "OOMKilled":
        return "Kubernetes: the app ran out of memory (OOMKilled) at its memory limit"
    if condition.reason == "DeadlineExceeded":
        return "Kubernetes: DeadlineExceeded, the job ran past its activeDeadlineSeconds"
    reason = f"Kubernetes: Job failed ({condition.reason or 'no reason'}"
    if terminated is not None and terminated.reason:
        reason += f", container {terminated.reason}"
    return reason + ")"
