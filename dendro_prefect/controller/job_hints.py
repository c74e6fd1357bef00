"""The central's PubSub as hints, with polling as the fallback, behind one small interface.

Messages arrive on the `pubnub` SDK's thread and are queued; the controller waits for the next
messages or for its poll interval, whichever comes first. With the `mock-subscribe-key` (a central
without PubSub) nothing is subscribed and every wait is a plain poll interval.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Any, Callable

import anyio
from pubnub.callbacks import SubscribeCallback
from pubnub.enums import PNStatusCategory
from pubnub.pnconfiguration import PNConfiguration
from pubnub.pubnub import PubNub

from ..protocol.models import ProtocolError, PubsubSubscription

logger = logging.getLogger(__name__)

RESUBSCRIBE_AFTER_SEC = 60.0


class Subscribed:
    """Queued when the subscription is made, or made again: what the central published before (since the last
    round, or while it was lost) was heard by no one, so the controller catches up with a round at once instead of
    at its next poll."""


SUBSCRIBED = Subscribed()


class _Listener(SubscribeCallback):
    def __init__(self, hints: "JobHints") -> None:
        self._hints = hints

    def status(self, pubnub: PubNub, status: Any) -> None:
        if status.category in (PNStatusCategory.PNConnectedCategory, PNStatusCategory.PNReconnectedCategory):
            self._hints.subscribed()
        elif status.is_error() or status.category == PNStatusCategory.PNUnexpectedDisconnectCategory:
            if self._hints.connected or self._hints.lost_at is None:
                self._hints.lost_at = time.monotonic()
            self._hints.connected = False
            self._hints.logger.warning("PubSub: %s (polling continues)", status.category.name)

    def message(self, pubnub: PubNub, message: Any) -> None:
        self._hints.receive(message.message)

    def presence(self, pubnub: PubNub, presence: Any) -> None:
        pass


class JobHints:
    def __init__(self, subscription: PubsubSubscription, keep: Callable[[Any], Any | None],
                 log: logging.Logger | logging.LoggerAdapter = logger, origin: str | None = None) -> None:
        """`keep(document)`: the message parsed if it is for this controller, else None (ProtocolError when
        malformed). `origin`: the configuration's `pubsub_origin` (host:port of a PubNub-compatible server), or
        None for PubNub itself."""
        self.subscription = subscription
        self.origin = origin
        self.logger = log
        self._keep = keep
        self.connected = False
        self.lost_at: float | None = None  # when the subscription was lost, if it was
        self._queue: queue.Queue[Any] = queue.Queue()
        self._pubnub: PubNub | None = None

    def start(self) -> None:
        if self.subscription.is_mock:
            self.logger.info("PubSub: the central has none (mock-subscribe-key); polling only")
            return
        config = PNConfiguration()
        config.subscribe_key = self.subscription.pubnubSubscribeKey
        config.user_id = self.subscription.pubnubUser
        config.daemon = True
        config.disable_config_locking = False
        if self.origin:
            config.origin = self.origin
            config.ssl = not self.origin.startswith(("127.", "localhost"))
        self._pubnub = PubNub(config)
        self._pubnub.add_listener(_Listener(self))
        self._pubnub.subscribe().channels([self.subscription.pubnubChannel]).execute()

    def stop(self) -> None:
        if self._pubnub is not None:
            self._pubnub.unsubscribe_all()
            self._pubnub.stop()
            self._pubnub = None

    def subscribed(self) -> None:
        self.connected = True
        self._queue.put(SUBSCRIBED)

    def receive(self, document: Any) -> None:
        """Keep well-formed messages for this controller; log and drop the rest."""
        try:
            message = self._keep(document)
        except ProtocolError as error:
            self.logger.warning("%s; ignored", error)
            return
        if message is not None:
            self._queue.put(message)

    async def wait(self, timeout: float) -> list[Any]:
        """The messages that arrive within `timeout` seconds (all that are queued, once one is). A
        subscription lost for RESUBSCRIBE_AFTER_SEC is made again: the pubnub SDK stops reconnecting
        after a few tries, and a PubSub outage must not leave the controller polling for good."""
        if self._pubnub is not None and not self.connected and self.lost_at is not None \
                and time.monotonic() - self.lost_at > RESUBSCRIBE_AFTER_SEC:
            self.logger.warning("PubSub: lost for %.0f s; subscribing again", time.monotonic() - self.lost_at)
            self.lost_at = time.monotonic()
            await anyio.to_thread.run_sync(self.stop)
            self.start()
        try:
            first = await anyio.to_thread.run_sync(lambda: self._queue.get(timeout=timeout), abandon_on_cancel=True)
        except queue.Empty:
            return []
        messages = [first]
        while not self._queue.empty():
            messages.append(self._queue.get_nowait())
        return messages
