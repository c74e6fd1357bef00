"""A real `pubnub` SDK subscriber for tests: what the SDK delivers lands in queues."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pubnub.callbacks import SubscribeCallback
from pubnub.enums import PNStatusCategory
from pubnub.models.consumer.common import PNStatus
from pubnub.models.consumer.pubsub import PNMessageResult
from pubnub.pnconfiguration import PNConfiguration
from pubnub.pubnub import PubNub


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Listener(SubscribeCallback):
    def __init__(self) -> None:
        self.messages: queue.Queue[PNMessageResult] = queue.Queue()
        self.statuses: queue.Queue[PNStatus] = queue.Queue()

    def status(self, pubnub: PubNub, status: PNStatus) -> None:
        self.statuses.put(status)

    def message(self, pubnub: PubNub, message: PNMessageResult) -> None:
        self.messages.put(message)

    def presence(self, pubnub: PubNub, presence: object) -> None:
        pass

    def wait_for_status(self, category: PNStatusCategory, timeout: float = 10) -> PNStatus:
        deadline = time.monotonic() + timeout
        while True:
            status = self.statuses.get(timeout=max(deadline - time.monotonic(), 0))
            if status.category == category:
                return status


@contextmanager
def subscribed(origin: str, channels: list[str], subscribe_key: str, timetoken: int = 0) -> Iterator[Listener]:
    """A real SDK client subscribed from `timetoken` (0: from now, as a fresh client does)."""
    config = PNConfiguration()
    config.subscribe_key = subscribe_key
    config.user_id = "test-subscriber"
    config.origin = origin
    config.ssl = False
    config.daemon = True  # an abandoned long-poll must not keep pytest alive
    config.disable_config_locking = False  # the SDK warns that mutable configs are deprecated
    pubnub = PubNub(config)
    listener = Listener()
    pubnub.add_listener(listener)
    pubnub.subscribe().channels(channels).with_timetoken(timetoken).execute()
    try:
        yield listener
    finally:
        pubnub.unsubscribe_all()
        pubnub.stop()


