"""Watch streams: newline-delimited JSON events replayed from the store's history. Without a resourceVersion (or
with "0") the stream starts with a synthetic ADDED per existing object; resuming from before the kept history gets
one ERROR event carrying a 410 Expired Status, then the stream ends, as kube-apiserver does."""

from __future__ import annotations

import asyncio
import json
import time
from typing import AsyncIterator

from .errors import bad_request, status_body
from .resources import Resource
from .selectors import Selector
from .store import Change, Expired, Store

IDLE_WAKE_SECONDS = 5.0


def line(event_type: str, obj: dict) -> bytes:
    return json.dumps({"type": event_type, "object": obj}, separators=(",", ":")).encode() + b"\n"


def start_version(resource_version: str | None) -> int | None:
    """None means 'list first'; 400 for a resourceVersion that is not a number, as the apiserver answers."""
    if resource_version in (None, "", "0"):
        return None
    try:
        return int(resource_version)
    except ValueError:
        raise bad_request(f"invalid resource version: {resource_version!r}") from None


def translate(change: Change, selector: Selector) -> str | None:
    """The event a filtered watcher sees: an object entering the selection is ADDED, leaving it is DELETED."""
    now = selector.match(change.obj)
    before = selector.match(change.previous) if change.previous is not None else False
    if change.type == "MODIFIED":
        return {(True, True): "MODIFIED", (True, False): "ADDED", (False, True): "DELETED"}.get((now, before))
    if change.type == "DELETED":
        return "DELETED" if now or before else None
    return "ADDED" if now else None


async def watch_stream(store: Store, res: Resource, namespace: str | None, selector: Selector, start: int | None,
                       timeout: float | None) -> AsyncIterator[bytes]:
    deadline = time.monotonic() + timeout if timeout else None
    last = store.rv if start is None else start
    if start is None:
        for obj in store.list(res.plural, namespace, selector.match):
            yield line("ADDED", obj)
    while True:
        waiter = store.waiter()
        try:
            changes = store.changes_since(last)
        except Expired as error:
            yield line("ERROR", status_body(410, str(error), "Expired"))
            return
        for change in changes:
            last = change.rv
            if change.plural != res.plural or namespace and change.obj["metadata"].get("namespace") != namespace:
                continue
            event_type = translate(change, selector)
            if event_type:
                yield line(event_type, change.obj)
        remaining = deadline - time.monotonic() if deadline else IDLE_WAKE_SECONDS
        if remaining <= 0:
            return
        try:
            await asyncio.wait_for(waiter.wait(), timeout=min(remaining, IDLE_WAKE_SECONDS))
        except TimeoutError:
            pass
