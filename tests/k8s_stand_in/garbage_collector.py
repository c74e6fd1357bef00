"""Deletion as the apiserver and garbage collector do it: graceful pod deletion (the kubelet finishes it),
propagation policies (Foreground and Orphan hold the owner with a finalizer, Background removes it at once), and a
sweep deleting dependents whose owners are all gone. batch/v1 Jobs default to Orphan, as in Kubernetes."""

from __future__ import annotations

import time

from .errors import bad_request, success_body
from .meta import owner_uids, rfc3339, strip_owner
from .resources import RESOURCES
from .store import Store

POLICIES = ("Foreground", "Background", "Orphan")
FINALIZERS = {"Foreground": "foregroundDeletion", "Orphan": "orphan"}
ORPHAN_WARNING = ('299 - "child pods are preserved by default when jobs are deleted; set propagationPolicy=Background '
                  'to remove them or set propagationPolicy=Orphan to suppress this warning"')


class GarbageCollector:
    def __init__(self, store: Store) -> None:
        self.store = store

    def delete(self, plural: str, namespace: str, name: str, policy: str | None = None,
               grace: int | None = None) -> dict:
        """The DELETE verb; returns the response body (the object while it is held, else a success Status)."""
        if policy is not None and policy not in POLICIES:
            raise bad_request(f'Unsupported value: "{policy}": supported values: "Foreground", "Background", "Orphan"')
        obj = self.store.require(plural, namespace, name)
        if plural == "pods":
            return self.delete_pod(obj, grace)
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            return obj
        policy = policy or ("Orphan" if plural == "jobs" else "Background")
        if policy == "Background" or not self.store.dependents(meta["uid"]) and plural != "jobs":
            self.store.remove(plural, namespace, name)
            return success_body(name, RESOURCES[plural].group, plural, meta["uid"])
        meta["deletionTimestamp"] = rfc3339()
        meta["deletionGracePeriodSeconds"] = 0
        meta["finalizers"] = (meta.get("finalizers") or []) + [FINALIZERS[policy]]
        return self.store.update(plural, obj)

    def delete_pod(self, pod: dict, grace: int | None) -> dict:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            return pod
        if not pod["spec"].get("nodeName"):
            return self.store.remove("pods", meta["namespace"], meta["name"])
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30) if grace is None else grace
        meta["deletionTimestamp"] = rfc3339(time.time() + grace)
        meta["deletionGracePeriodSeconds"] = grace
        return self.store.update("pods", pod)

    def sync(self) -> None:
        for plural in ("jobs", "secrets", "pods"):
            for obj in self.store.list(plural):
                finalizers = obj["metadata"].get("finalizers") or []
                if obj["metadata"].get("deletionTimestamp") and plural != "pods":
                    self.finish_deletion(plural, obj, finalizers)
                elif owner_uids(obj) and not any(self.store.has_uid(uid) for uid in owner_uids(obj)):
                    self.delete(plural, obj["metadata"].get("namespace", ""), obj["metadata"]["name"], "Background")

    def finish_deletion(self, plural: str, obj: dict, finalizers: list[str]) -> None:
        meta = obj["metadata"]
        dependents = self.store.dependents(meta["uid"])
        if "orphan" in finalizers:
            for dep_plural, dependent in dependents:
                strip_owner(dependent, meta["uid"])
                self.store.update(dep_plural, dependent)
        elif "foregroundDeletion" in finalizers and dependents:
            for dep_plural, dependent in dependents:
                self.delete(dep_plural, dependent["metadata"].get("namespace", ""), dependent["metadata"]["name"],
                            "Background")
            return
        self.store.remove(plural, meta.get("namespace", ""), meta["name"])
