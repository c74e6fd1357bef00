"""Core v1 Events as the kubelet, scheduler and job controller write them: repeats of one (object, reason, message)
are folded into one Event whose `count` and `lastTimestamp` move, as the client-go event recorder does."""

from __future__ import annotations

import time

from .meta import rfc3339
from .store import Store

NODE_NAME = "stand-in-node"


class EventRecorder:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.seen: dict[tuple, tuple[str, str]] = {}

    def record(self, obj: dict, type_: str, reason: str, message: str, component: str,
               field_path: str | None = None) -> None:
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        key = (meta["uid"], type_, reason, message, component)
        now = rfc3339()
        if key in self.seen:
            event = self.store.get("events", *self.seen[key])
            if event is not None:
                event["count"] += 1
                event["lastTimestamp"] = now
                self.store.update("events", event)
                return
        involved = {"kind": obj["kind"], "namespace": meta.get("namespace"), "name": meta["name"], "uid": meta["uid"],
                    "apiVersion": obj["apiVersion"], "resourceVersion": meta.get("resourceVersion")}
        if field_path:
            involved["fieldPath"] = field_path
        name = f"{meta['name']}.{time.time_ns():x}"
        source = {"component": component}
        if component == "kubelet":
            source["host"] = NODE_NAME
        event = {"kind": "Event", "apiVersion": "v1",
                 "metadata": {"name": name, "namespace": namespace},
                 "involvedObject": {k: v for k, v in involved.items() if v is not None},
                 "reason": reason, "message": message, "source": source, "firstTimestamp": now, "lastTimestamp": now,
                 "count": 1, "type": type_, "eventTime": None, "reportingComponent": component,
                 "reportingInstance": NODE_NAME if component == "kubelet" else ""}
        self.store.create("events", event)
        self.seen[key] = (namespace, name)
