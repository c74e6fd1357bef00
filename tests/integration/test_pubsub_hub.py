"""The real `pubnub` SDK, pointed at a real uvicorn serving the hub, receives what the hub publishes."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest
import requests
import uvicorn
from fastapi import FastAPI
from pubnub.enums import PNStatusCategory

from dendro_prefect.stand_in.pubsub_hub import PubSubHub
from tests.pubnub_listener import subscribed, wait_until

SUBSCRIBE_KEY = "sub-c-test"
SHUTDOWN_LIMIT_SEC = 5
# How long a message may take to arrive: the SDK's subscribe loop runs in threads of its own, slow on a busy machine.
DELIVERY_DEADLINE_SEC = 30


@dataclass
class Server:
    hub: PubSubHub
    uvicorn_server: uvicorn.Server
    thread: threading.Thread
    origin: str

    def stop(self) -> float:
        """Stop the server and return how long it took."""
        started = time.monotonic()
        self.uvicorn_server.should_exit = True
        self.thread.join(SHUTDOWN_LIMIT_SEC)
        return time.monotonic() - started


@pytest.fixture
def server() -> Iterator[Server]:
    hub = PubSubHub(SUBSCRIBE_KEY)
    app = FastAPI()
    app.include_router(hub.router())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # uvicorn waits for in-flight requests on shutdown, forever by default; a long-poll is one.
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1)
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: instance.started or not thread.is_alive(), "uvicorn to start")
    assert instance.started
    running = Server(hub, instance, thread, f"127.0.0.1:{port}")
    yield running
    running.stop()
    assert not thread.is_alive()


def test_published_message_arrives_on_its_channel_only(server: Server) -> None:
    with subscribed(server.origin, ["jobs"], SUBSCRIBE_KEY) as listener:
        listener.wait_for_status(PNStatusCategory.PNConnectedCategory)
        server.hub.publish("other", {"type": "elsewhere"})
        message = {"type": "newPendingJob", "job": {"id": "j1", "inputs": [1, 2.5, None, "x"]}}
        timetoken = server.hub.publish("jobs", message)

        received = listener.messages.get(timeout=DELIVERY_DEADLINE_SEC)
        assert received.channel == "jobs"
        assert received.message == message
        assert received.timetoken == int(timetoken)
        assert len(timetoken) == 17
        assert listener.messages.empty()


def test_wrong_subscribe_key_gets_nothing(server: Server) -> None:
    with subscribed(server.origin, ["jobs"], SUBSCRIBE_KEY) as right, subscribed(server.origin, ["jobs"], "sub-c-wrong") as wrong:
        right.wait_for_status(PNStatusCategory.PNConnectedCategory)
        denied = wrong.wait_for_status(PNStatusCategory.PNAccessDeniedCategory)
        assert denied.status_code == 403

        server.hub.publish("jobs", {"type": "secret"})
        assert right.messages.get(timeout=DELIVERY_DEADLINE_SEC).message == {"type": "secret"}
        with pytest.raises(queue.Empty):
            wrong.messages.get(timeout=0.5)


def test_reconnecting_subscriber_gets_what_it_missed(server: Server) -> None:
    missed = server.hub.publish("jobs", {"n": 1})
    server.hub.publish("jobs", {"n": 2})
    with subscribed(server.origin, ["jobs"], SUBSCRIBE_KEY, int(missed)) as listener:
        assert listener.messages.get(timeout=DELIVERY_DEADLINE_SEC).message == {"n": 2}


def test_shutdown_cancels_an_outstanding_long_poll(server: Server) -> None:
    with subscribed(server.origin, ["jobs"], SUBSCRIBE_KEY) as listener:
        listener.wait_for_status(PNStatusCategory.PNConnectedCategory)
        wait_until(lambda: bool(server.hub._waiters), "the long-poll to reach the hub")
        assert server.stop() < SHUTDOWN_LIMIT_SEC
        assert not server.thread.is_alive()
        assert not server.hub._waiters


def test_rest_publish_as_the_real_central_sends_it(server: Server) -> None:
    """PubNub's REST publish, built as dendro 0.2.17's `publish_pubsub_message` builds it: the message's JSON,
    URL-quoted (a `/` in it stays a `/`), as the last path segment."""
    message = {"type": "newPendingJob", "projectId": "p/1", "computeResourceId": "c", "jobId": "p.1 ü"}
    path = f"/publish/pub-c-any/{SUBSCRIBE_KEY}/0/jobs/0/{quote(json.dumps(message))}?uuid=dendro"
    with subscribed(server.origin, ["jobs"], SUBSCRIBE_KEY) as listener:
        listener.wait_for_status(PNStatusCategory.PNConnectedCategory)
        answer = requests.get(f"http://{server.origin}{path}", timeout=10)
        assert answer.status_code == 200 and answer.json()[:2] == [1, "Sent"]
        assert listener.messages.get(timeout=DELIVERY_DEADLINE_SEC).message == message
    wrong_key = requests.get(f"http://{server.origin}{path.replace(SUBSCRIBE_KEY, 'sub-c-wrong')}", timeout=10)
    assert wrong_key.status_code == 403
