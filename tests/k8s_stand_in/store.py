"""The object store (etcd's part): objects by resource, one global resourceVersion counter, and a change history
that watches replay. Only the event loop thread touches it, so it needs no locks; every object going in or out is
copied so that no caller can change stored state behind the history's back."""

from __future__ import annotations

import asyncio
import bisect
import copy
from dataclasses import dataclass

from .errors import already_exists, not_found
from .meta import new_uid, rfc3339
from .resources import RESOURCES

MAX_HISTORY = 50_000


@dataclass(frozen=True)
class Change:
    rv: int
    type: str
    plural: str
    obj: dict
    previous: dict | None


class Expired(Exception):
    """A watch asked to resume from before the kept history (410 Gone)."""


class Store:
    def __init__(self) -> None:
        self.objects: dict[str, dict[tuple[str, str], dict]] = {plural: {} for plural in RESOURCES}
        self.uids: dict[str, tuple[str, str, str]] = {}
        self.rv = 0
        self.floor = 0
        self.history: list[Change] = []
        self._changed = asyncio.Event()

    def waiter(self) -> asyncio.Event:
        """An event set at the next change (take it before reading history so that no change is missed)."""
        return self._changed

    def _record(self, kind: str, plural: str, obj: dict, previous: dict | None) -> None:
        self.history.append(Change(self.rv, kind, plural, obj, previous))
        if len(self.history) > MAX_HISTORY:
            del self.history[: len(self.history) - MAX_HISTORY]
            self.floor = self.history[0].rv - 1
        self._changed.set()
        self._changed = asyncio.Event()

    def _bump(self, obj: dict) -> dict:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        return obj

    def get(self, plural: str, namespace: str, name: str) -> dict | None:
        found = self.objects[plural].get((namespace, name))
        return copy.deepcopy(found) if found else None

    def require(self, plural: str, namespace: str, name: str) -> dict:
        found = self.get(plural, namespace, name)
        if found is None:
            res = RESOURCES[plural]
            raise not_found(res.qualified, name, res.group, plural)
        return found

    def has_uid(self, uid: str) -> bool:
        return uid in self.uids

    def list(self, plural: str, namespace: str | None = None, match=None) -> list[dict]:
        items = [obj for (ns, _), obj in sorted(self.objects[plural].items())
                 if (namespace is None or ns == namespace) and (match is None or match(obj))]
        return copy.deepcopy(items)

    def dependents(self, owner_uid: str) -> list[tuple[str, dict]]:
        return [(plural, copy.deepcopy(obj)) for plural, objects in self.objects.items() for obj in objects.values()
                if any(ref.get("uid") == owner_uid for ref in obj["metadata"].get("ownerReferences") or [])]

    def create(self, plural: str, obj: dict) -> dict:
        res = RESOURCES[plural]
        meta = obj["metadata"]
        key = (meta.get("namespace", "") if res.namespaced else "", meta["name"])
        if key in self.objects[plural]:
            raise already_exists(res.qualified, meta["name"], res.group, plural)
        obj = copy.deepcopy(obj)
        obj["metadata"].setdefault("uid", new_uid())
        obj["metadata"]["creationTimestamp"] = rfc3339()
        self._bump(obj)
        self.objects[plural][key] = obj
        self.uids[obj["metadata"]["uid"]] = (plural, *key)
        self._record("ADDED", plural, obj, None)
        return copy.deepcopy(obj)

    def update(self, plural: str, obj: dict) -> dict:
        """Replace the stored object; a write that changes nothing keeps its resourceVersion (no watch event)."""
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        current = self.objects[plural].get(key)
        if current is None:
            res = RESOURCES[plural]
            raise not_found(res.qualified, meta["name"], res.group, plural)
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        if obj == current:
            return copy.deepcopy(current)
        self._bump(obj)
        self.objects[plural][key] = obj
        self._record("MODIFIED", plural, obj, current)
        return copy.deepcopy(obj)

    def remove(self, plural: str, namespace: str, name: str) -> dict | None:
        obj = self.objects[plural].pop((namespace, name), None)
        if obj is None:
            return None
        self.uids.pop(obj["metadata"]["uid"], None)
        final = self._bump(copy.deepcopy(obj))
        self._record("DELETED", plural, final, obj)
        return copy.deepcopy(final)

    def changes_since(self, rv: int) -> list[Change]:
        if rv < self.floor:
            raise Expired(f"too old resource version: {rv} ({self.floor + 1})")
        start = bisect.bisect_right(self.history, rv, key=lambda change: change.rv)
        return self.history[start:]

    def compact(self) -> None:
        """Forget all history, like an etcd compaction: watches must start from now on."""
        self.floor = self.rv
        self.history.clear()
