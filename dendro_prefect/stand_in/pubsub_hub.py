"""A PubNub-compatible PubSub hub, so the real `pubnub` SDK can subscribe to the central stand-in.

Clients point `PNConfiguration.origin` at the stand-in (with `ssl = False`); the SDK then calls the
routes below exactly as it would call PubNub. Only what the SDK's subscribe loop uses is served:
the v2 long-poll subscribe, presence heartbeat and leave (acknowledged, no presence tracking), and
`/time/0`, which the SDK polls to decide that it can reconnect after a network error; and PubNub's
REST publish, through which the real Dendro central publishes its messages.

Messages live in memory: a bounded history per channel lets a subscriber that reconnects with an
older timetoken catch up on what it missed. Channel groups and presence events are not supported.

Faults, for tests (`set_mode`): "down" is a PubSub outage: every route answers 503, long-polls
waiting end with 503, and what is published meanwhile is lost. "duplicate-shuffled" holds what is
published for SHUFFLE_HOLD_SEC, then delivers each held message twice: the batch reversed, then
again in a random order; so two messages published together never arrive in their order.

Serve it with uvicorn's `timeout_graceful_shutdown` set (a few seconds): on shutdown uvicorn waits
for in-flight requests, by default without limit, and tells a request nothing before the lifespan
shutdown that comes after that wait, so only its cancelling of the tasks ends outstanding long-polls.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from fastapi import APIRouter
from fastapi.responses import JSONResponse

LONG_POLL_SEC = 280  # PubNub's own long-poll length; the SDK gives up after 310 s
HISTORY_PER_CHANNEL = 1000
MAX_MESSAGES_PER_RESPONSE = 100  # as PubNub: a client that is far behind catches up in pages
REGION = 1  # a single node, so one region
PUBLISHER_UUID = "dendro-central"
PRESENCE_OK = {"status": 200, "message": "OK", "service": "Presence"}
UNAVAILABLE = {"status": 503, "error": True, "service": "Balancer", "message": "Service Unavailable"}
SHUFFLE_HOLD_SEC = 0.5  # "duplicate-shuffled" collects what is published this long, then delivers it

PubSubMode = Literal["up", "down", "duplicate-shuffled"]
PUBSUB_MODES: tuple[str, ...] = get_args(PubSubMode)


@dataclass(eq=False)
class _Waiter:
    """A long-poll waiting on its own event loop for a message on one of `channels`."""

    channels: frozenset[str]
    loop: asyncio.AbstractEventLoop
    event: asyncio.Event = field(default_factory=asyncio.Event)


class PubSubHub:
    """Publishes messages to long-polling PubNub SDK subscribers of one subscribe key.

    `publish` may be called from any thread (sync routes run in a threadpool), while long-polls wait
    on the server's event loop without holding a thread; one lock guards history and waiters, and a
    publish wakes waiters through `call_soon_threadsafe`, the only safe way to touch their loop.
    """

    def __init__(self, subscribe_key: str) -> None:
        self.subscribe_key = subscribe_key
        self._lock = threading.Lock()
        self._last_timetoken = 0
        self._history: dict[str, deque[tuple[int, dict[str, Any]]]] = {}
        self._waiters: set[_Waiter] = set()
        self.mode: PubSubMode = "up"
        self._held: list[tuple[str, dict[str, Any]]] = []  # (channel, message) in "duplicate-shuffled"
        self._hold_round = 0  # which flush timer is current: one of an earlier round does nothing
        self._random = random.Random()

    def _next_timetoken(self) -> int:
        """Now in PubNub's units of 10^-7 s, strictly increasing so no two events share one.

        Callers hold the lock.
        """
        self._last_timetoken = max(time.time_ns() // 100, self._last_timetoken + 1)
        return self._last_timetoken

    def publish(self, channel: str, message: dict) -> str:
        """Store `message` on `channel`, wake its subscribers and return its timetoken (while PubSub
        is "down" or holds messages to shuffle, a timetoken of the moment that names no message)."""
        # A JSON round trip copies the message and rejects what cannot be sent, here rather than
        # in every subscriber's response.
        payload = json.loads(json.dumps(message))
        with self._lock:
            if self.mode == "down":
                return str(self._next_timetoken())
            if self.mode == "duplicate-shuffled":
                self._held.append((channel, payload))
                if len(self._held) == 1:
                    timer = threading.Timer(SHUFFLE_HOLD_SEC, self._flush_held, args=(self._hold_round,))
                    timer.daemon = True
                    timer.start()
                return str(self._next_timetoken())
            return self._store(channel, payload)

    def set_mode(self, mode: PubSubMode) -> None:
        """Switch PubSub "up", "down" or to "duplicate-shuffled" (see the module's docstring)."""
        if mode not in PUBSUB_MODES:
            raise ValueError(f"PubSub mode {mode!r} is not one of {', '.join(PUBSUB_MODES)}")
        with self._lock:
            if self.mode == "duplicate-shuffled" and mode != "duplicate-shuffled":
                self._flush_held_locked()  # what was held is delivered as that mode delivers it
            self.mode = mode
            if mode == "down":  # long-polls waiting now end, with 503
                for waiter in self._waiters:
                    waiter.loop.call_soon_threadsafe(waiter.event.set)

    def _flush_held(self, hold_round: int) -> None:
        with self._lock:
            if hold_round == self._hold_round:
                self._flush_held_locked()

    def _flush_held_locked(self) -> None:
        """Deliver the held messages twice each: reversed, then shuffled. Callers hold the lock."""
        held, self._held = self._held, []
        self._hold_round += 1
        for channel, payload in [*reversed(held), *self._random.sample(held, len(held))]:
            self._store(channel, payload)

    def _store(self, channel: str, payload: dict[str, Any]) -> str:
        """Add one message to the channel's history and wake its subscribers. Callers hold the lock."""
        timetoken = self._next_timetoken()
        envelope = {
            "a": "0",
            "f": 0,
            "i": PUBLISHER_UUID,
            "p": {"t": str(timetoken), "r": REGION},
            "k": self.subscribe_key,
            "c": channel,
            "d": payload,
            "b": channel,
        }
        self._history.setdefault(channel, deque(maxlen=HISTORY_PER_CHANNEL)).append((timetoken, envelope))
        for waiter in self._waiters:
            if channel in waiter.channels:
                waiter.loop.call_soon_threadsafe(waiter.event.set)
        return str(timetoken)

    def _messages_after(self, channels: frozenset[str], timetoken: int) -> list[tuple[int, dict[str, Any]]]:
        with self._lock:
            found = [item for channel in channels for item in self._history.get(channel, ()) if item[0] > timetoken]
        return sorted(found, key=lambda item: item[0])[:MAX_MESSAGES_PER_RESPONSE]

    async def _wait_for_messages(self, channels: frozenset[str],
                                 timetoken: int) -> list[tuple[int, dict[str, Any]]] | None:
        """Messages after `timetoken`, waiting up to LONG_POLL_SEC for some; [] if none came, None
        if PubSub went down meanwhile.

        The waiter is registered before the first look at the history, so a message published in
        between still sets its event.
        """
        waiter = _Waiter(channels, asyncio.get_running_loop())
        with self._lock:
            self._waiters.add(waiter)
        try:
            return await asyncio.wait_for(self._wait(waiter, timetoken), LONG_POLL_SEC)
        except asyncio.TimeoutError:
            return []
        finally:
            with self._lock:
                self._waiters.discard(waiter)

    async def _wait(self, waiter: _Waiter, timetoken: int) -> list[tuple[int, dict[str, Any]]] | None:
        while not (found := self._messages_after(waiter.channels, timetoken)):
            if self.mode == "down":
                return None
            await waiter.event.wait()
            waiter.event.clear()
        return None if self.mode == "down" else found

    def _unavailable(self) -> JSONResponse | None:
        """PubNub's 503 while PubSub is "down"."""
        return JSONResponse(UNAVAILABLE, status_code=503) if self.mode == "down" else None

    def _key_error(self, sub_key: str) -> JSONResponse | None:
        """A PubNub-like 403 for a wrong key: the SDK then stops instead of retrying forever."""
        if sub_key == self.subscribe_key:
            return None
        content = {"status": 403, "error": True, "service": "Access Manager", "message": "Invalid Subscribe Key"}
        return JSONResponse(content, status_code=403)

    def router(self) -> APIRouter:
        """The PubNub routes, to include in the stand-in's FastAPI app."""
        router = APIRouter(tags=["pubsub"])

        @router.get("/v2/subscribe/{sub_key}/{channels}/0")
        async def subscribe(sub_key: str, channels: str, tt: int = 0) -> JSONResponse:
            """Long-poll; tt=0 is the handshake, answered at once with the timetoken to poll from.

            The region `tr` is not read: there is only one.
            """
            if error := self._key_error(sub_key) or self._unavailable():
                return error
            if tt == 0:
                with self._lock:
                    now = self._next_timetoken()
                return JSONResponse({"t": {"t": str(now), "r": REGION}, "m": []})
            found = await self._wait_for_messages(frozenset(filter(None, channels.split(","))), tt)
            if found is None:
                return JSONResponse(UNAVAILABLE, status_code=503)
            latest = found[-1][0] if found else tt
            return JSONResponse({"t": {"t": str(latest), "r": REGION}, "m": [envelope for _, envelope in found]})

        @router.get("/v2/presence/sub-key/{sub_key}/channel/{channels}/heartbeat")
        async def heartbeat(sub_key: str) -> JSONResponse:
            return self._key_error(sub_key) or self._unavailable() or JSONResponse(PRESENCE_OK)

        @router.get("/v2/presence/sub-key/{sub_key}/channel/{channels}/leave")
        async def leave(sub_key: str) -> JSONResponse:
            return self._key_error(sub_key) or self._unavailable() or JSONResponse(PRESENCE_OK)

        @router.get("/publish/{pub_key}/{sub_key}/0/{channel}/0/{payload:path}")
        async def publish(pub_key: str, sub_key: str, channel: str, payload: str) -> JSONResponse:
            """PubNub's REST publish (the message is the URL-quoted JSON of the last path segment), as the
            real Dendro central publishes; any publish key is taken. Answers PubNub's `[1, "Sent", tt]`."""
            if error := self._key_error(sub_key) or self._unavailable():
                return error
            try:
                message = json.loads(payload)
            except ValueError:
                return JSONResponse([0, "Invalid JSON", "0"], status_code=400)
            return JSONResponse([1, "Sent", self.publish(channel, message)])

        @router.get("/time/0")
        async def server_time() -> JSONResponse:
            if error := self._unavailable():
                return error
            with self._lock:
                return JSONResponse([self._next_timetoken()])

        return router
