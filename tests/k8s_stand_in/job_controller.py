"""A minimal batch/v1 Job controller: creates the pods (replacing failed ones while backoffLimit allows), counts
their outcomes into status, applies activeDeadlineSeconds and backoffLimit (FailureTarget first, Failed once no pod
runs), completes the Job (SuccessCriteriaMet, Complete, completionTime) and deletes it ttlSecondsAfterFinished after
it finished. Like Kubernetes, completionTime is only set on success."""

from __future__ import annotations

import logging

from .defaults import pod_for_job
from .events import EventRecorder
from .garbage_collector import GarbageCollector
from .meta import owner_uids, parse_rfc3339, rfc3339
from .podstatus import TERMINAL
from .store import Store

log = logging.getLogger(__name__)
REPLACEMENT_DELAY = 1.0  # Kubernetes backs off 10 s, doubling; a test cannot wait that long
COMPONENT = "job-controller"
FAILURES = {"BackoffLimitExceeded": "Job has reached the specified backoff limit",
            "DeadlineExceeded": "Job was active longer than specified deadline"}


def condition(type_: str, reason: str, message: str) -> dict:
    now = rfc3339()
    return {"type": type_, "status": "True", "lastProbeTime": now, "lastTransitionTime": now, "reason": reason,
            "message": message}


def find(conditions: list[dict], type_: str) -> dict | None:
    return next((c for c in conditions if c["type"] == type_ and c["status"] == "True"), None)


def is_ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


class JobController:
    def __init__(self, store: Store, recorder: EventRecorder, gc: GarbageCollector) -> None:
        self.store, self.recorder, self.gc = store, recorder, gc
        self.known: dict[str, set[str]] = {}
        self.counted: dict[str, set[str]] = {}
        self.last_failure: dict[str, float] = {}
        self.started: dict[str, float] = {}

    def sync(self, now: float) -> None:
        jobs = self.store.list("jobs")
        owned: dict[str, list[dict]] = {}
        for pod in self.store.list("pods"):
            for uid in owner_uids(pod):
                owned.setdefault(uid, []).append(pod)
        for job in jobs:
            try:
                if not job["metadata"].get("deletionTimestamp"):
                    self.sync_job(job, owned.get(job["metadata"]["uid"], []), now)
            except Exception:  # one broken job must not stop the controller
                log.exception("job controller failed on %s", job["metadata"]["name"])
        live = {job["metadata"]["uid"] for job in jobs}
        for table in (self.known, self.counted, self.last_failure, self.started):
            for uid in [uid for uid in table if uid not in live]:
                del table[uid]

    def count(self, job: dict, pods: list[dict], now: float) -> None:
        """Fold finished pods, and pods that vanished unfinished, into the status counters exactly once."""
        uid, status = job["metadata"]["uid"], job["status"]
        known, counted = self.known.setdefault(uid, set()), self.counted.setdefault(uid, set())
        current = {pod["metadata"]["uid"]: pod for pod in pods}
        known |= current.keys()
        for pod_uid in sorted(known - counted):
            pod = current.get(pod_uid)
            phase = pod["status"].get("phase") if pod else "Failed"
            if phase in TERMINAL:
                counted.add(pod_uid)
                key = "succeeded" if phase == "Succeeded" else "failed"
                status[key] = status.get(key, 0) + 1
                if key == "failed":
                    self.last_failure[uid] = now

    def sync_job(self, job: dict, pods: list[dict], now: float) -> None:
        meta, spec, status = job["metadata"], job["spec"], job["status"]
        conditions = status.setdefault("conditions", [])
        self.count(job, pods, now)
        running = [pod for pod in pods if pod["status"].get("phase") not in TERMINAL]
        active = [pod for pod in running if not pod["metadata"].get("deletionTimestamp")]
        finished = find(conditions, "Complete") or find(conditions, "Failed")
        if finished:
            if self.expire(job, finished, now):
                return
        elif not spec.get("suspend"):
            if not status.get("startTime"):
                status["startTime"] = rfc3339(now)
                self.started[meta["uid"]] = now
            active = self.progress(job, conditions, active, running, now)
        status["active"] = len(active)
        status["ready"] = sum(1 for pod in active if is_ready(pod))
        status["terminating"] = sum(1 for pod in running if pod["metadata"].get("deletionTimestamp"))
        status["uncountedTerminatedPods"] = {}
        for key in ("active", "succeeded", "failed"):
            if not status.get(key):
                status.pop(key, None)
        if not conditions:
            del status["conditions"]
        self.store.update("jobs", job)

    def progress(self, job: dict, conditions: list[dict], active: list[dict], running: list[dict],
                 now: float) -> list[dict]:
        """Decide the Job's next step; returns the pods that are active afterwards."""
        spec, status, meta = job["spec"], job["status"], job["metadata"]
        target = find(conditions, "FailureTarget")
        if not target:
            deadline = spec.get("activeDeadlineSeconds")
            started = self.started.setdefault(meta["uid"], parse_rfc3339(status["startTime"]))
            reason = ("BackoffLimitExceeded" if status.get("failed", 0) > spec.get("backoffLimit", 6) else
                      "DeadlineExceeded" if deadline and now - started >= deadline else "")
            if reason:
                target = condition("FailureTarget", reason, FAILURES[reason])
                conditions.append(target)
        if target:
            for pod in active:
                self.gc.delete("pods", meta["namespace"], pod["metadata"]["name"])
                self.recorder.record(job, "Normal", "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}",
                                     COMPONENT)
            if not running:
                conditions.append(condition("Failed", target["reason"], target["message"]))
                self.recorder.record(job, "Warning", target["reason"], target["message"], COMPONENT)
            return []
        if status.get("succeeded", 0) >= spec.get("completions", 1):
            conditions.append(condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of "
                                                                                    "succeeded pods"))
            conditions.append(condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods"))
            status["completionTime"] = rfc3339(now)
            self.recorder.record(job, "Normal", "Completed", "Job completed", COMPONENT)
            return active
        wanted = min(spec.get("parallelism", 1), spec.get("completions", 1) - status.get("succeeded", 0)) - len(active)
        if wanted > 0 and now - self.last_failure.get(meta["uid"], 0) >= REPLACEMENT_DELAY:
            for _ in range(wanted):
                pod = self.store.create("pods", pod_for_job(job))
                self.known[meta["uid"]].add(pod["metadata"]["uid"])
                active.append(pod)
                self.recorder.record(job, "Normal", "SuccessfulCreate", f"Created pod: {pod['metadata']['name']}",
                                     COMPONENT)
        return active

    def expire(self, job: dict, finished: dict, now: float) -> bool:
        """The TTL-after-finished controller: True when it deleted the Job."""
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        if ttl is None or now < parse_rfc3339(finished["lastTransitionTime"]) + ttl:
            return False
        self.gc.delete("jobs", job["metadata"]["namespace"], job["metadata"]["name"], "Foreground")
        return True
