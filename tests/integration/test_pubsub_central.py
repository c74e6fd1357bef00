"""The real pubnub SDK, configured from the stand-in's `pubsub_subscription` answer, hears the
central's messages: new jobs, status changes and app changes."""

import time

from pubnub.enums import PNStatusCategory

from tests.conftest import create_letter_count_job
from tests.pubnub_listener import subscribed


def test_pubnub_sdk_hears_a_new_job_within_a_second(central, resource):
    subscription = resource.client.get_pubsub_subscription()
    with subscribed(subscription.pubnubOrigin, [subscription.pubnubChannel], subscription.pubnubSubscribeKey) as listener:
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
