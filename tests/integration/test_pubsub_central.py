"""The real pubnub SDK, configured from the stand-in's `pubsub_subscription` answer and pointed at its hub
(what a controller's `pubsub_origin` names), hears the central's messages: new jobs, status changes and app
changes."""

import asyncio
import time

import pytest
import requests
from pubnub.enums import PNStatusCategory
from pydantic import ValidationError

from dendro_prefect.config import ComputeResourceConfig
from dendro_prefect.controller.job_hints import SUBSCRIBED, JobHints
from dendro_prefect.controller.rounds import resource_messages
from dendro_prefect.protocol.signing import compute_resource_headers
from tests.conftest import create_letter_count_job
from tests.pubnub_listener import subscribed, wait_until


def test_pubnub_sdk_hears_a_new_job_within_a_second(central, resource):
    subscription = resource.client.get_pubsub_subscription()
    with subscribed(central.pubsub_origin, [subscription.pubnubChannel], subscription.pubnubSubscribeKey) as listener:
        listener.wait_for_status(PNStatusCategory.PNConnectedCategory)
        started = time.monotonic()
        job_id = create_letter_count_job(central, resource.id)
        message = listener.messages.get(timeout=5).message
        elapsed = time.monotonic() - started
        assert message == {"type": "newPendingJob", "projectId": job_id.split(".")[0],
                           "computeResourceId": resource.id, "jobId": job_id}
        # Creating the job takes two admin calls (project, file) before the job itself.
        assert elapsed < 1.0, f"newPendingJob took {elapsed:.2f} s"

        key = next(j["jobPrivateKey"] for j in resource.client.get_unfinished_jobs())
        resource.client.set_job_status(job_id, key, "starting")
        assert listener.messages.get(timeout=5).message["status"] == "starting"

        central.set_apps(resource.id, [{"name": "letter_count", "specUri": "file:///spec.json"}])
        assert listener.messages.get(timeout=5).message == {
            "type": "computeResourceAppsChanaged", "computeResourceId": resource.id}


def test_the_controller_subscribes_where_its_configuration_says(central, resource, tmp_path):
    """The central names no PubSub server (neither does the real one): the configuration file's
    `pubsub_origin` points the controller's pubnub SDK at the stand-in's hub."""
    answer = requests.get(central.url + f"/api/compute_resource/compute_resources/{resource.id}/pubsub_subscription",
                          headers=compute_resource_headers(
                              f"/api/compute_resource/compute_resources/{resource.id}/pubsub_subscription",
                              resource.id, resource.private_key), timeout=10).json()
    assert set(answer["subscription"]) == {"pubnubSubscribeKey", "pubnubChannel", "pubnubUser"}
    path = tmp_path / ".dendro_compute_resource.json"
    ComputeResourceConfig(compute_resource_id=resource.id, compute_resource_private_key=resource.private_key,
                          central_url=central.url, pubsub_origin=central.pubsub_origin).write(path)
    config = ComputeResourceConfig.read(path)
    hints = JobHints(resource.client.get_pubsub_subscription(), resource_messages(resource.id),
                     origin=config.pubsub_origin)
    hints.start()
    try:
        wait_until(lambda: hints.connected, "the subscription")
        assert asyncio.run(hints.wait(5)) == [SUBSCRIBED]  # the controller's cue to catch up with a round
        job_id = create_letter_count_job(central, resource.id)
        messages = asyncio.run(hints.wait(5))
        assert [(m.type, m.jobId) for m in messages] == [("newPendingJob", job_id)]
    finally:
        hints.stop()
    with pytest.raises(ValidationError, match="pubsub_origin"):
        ComputeResourceConfig(compute_resource_id=resource.id, compute_resource_private_key=resource.private_key,
                              pubsub_origin="http://127.0.0.1:1")  # host:port, no scheme
