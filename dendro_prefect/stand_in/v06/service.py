"""The 0.6 service stand-in's state and the rules its calls share: who is signed in, services, compute clients,
job views and the PubSub hints.

The stand-in has one user, signed in without GitHub: where the service takes a GitHub access token (the web
app's calls: creating a compute client), the stand-in takes its admin token, as the 0.2 stand-in's GUI calls
do; the user's API key (a job submitter's calls: createJob, cancelJob) is made with the user and read through
the admin API. Refusals are `ServiceError`s with the service's status codes and words.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Literal

from ..blobs import BlobStore
from ..pubsub_hub import PubSubHub
from ..service import Central
from .store import ServiceStore, random_id

DATABASE_FILE = "service-v06.sqlite"
PUBSUB_CHANNEL = "dendro-compute-clients"  # one channel for every service, as the service publishes
USER_ID = "github|dendro-stand-in"
# What createComputeClientHandler gives every new compute client.
DEFAULT_COMPUTE_SLOT = {"numCpus": 4, "numGpus": 0, "memoryGb": 8, "timeSec": 3600, "minNumCpus": 0,
                        "minNumGpus": 0, "minMemoryGb": 0, "minTimeSec": 0, "multiplicity": 1}
Permission = Literal["admin", "createJobs", "processJobs"]


class ServiceError(Exception):
    """A refusal: answered as the service answers, JSON `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the token of its Authorization header, and the base URL it reached us at."""

    token: str | None
    base_url: str


def bearer_token(authorization: str | None) -> str | None:
    """The second word of the Authorization header, as the service reads it (`authorization?.split(" ")[1]`):
    `Bearer: <key>`, which dendro 0.6.22's SDK sends with setJobStatus and createJob, works as `Bearer <key>` does."""
    words = (authorization or "").split(" ")
    return words[1] if len(words) > 1 else None


def same_secret(expected: str | None, given: str | None) -> bool:
    return expected is not None and given is not None and hmac.compare_digest(expected.encode(), given.encode())


def may(service: dict, user_id: str, permission: Permission) -> bool:
    """The service's `userIsAllowedTo...ForService`: its owner may do anything, its users what they are given."""
    if service["userId"] == user_id:
        return True
    user = next((u for u in service["users"] if u["userId"] == user_id), None)
    return bool(user and user[permission])


def public_job(job: dict) -> dict:
    """A job as anyone may see it: no private key, no secrets (both answered as null, as the service does)."""
    return {**job, "jobPrivateKey": None, "secrets": None}


def job_with_key(job: dict) -> dict:
    """A job as its compute client sees it: its private key, never its secrets."""
    return {**job, "secrets": None}


@dataclass
class ServiceStandIn:
    store: ServiceStore
    blobs: BlobStore
    hub: PubSubHub
    sign_in_token: str  # stands in for the signed-in user's GitHub access token
    mock_pubsub: bool = False

    @classmethod
    def beside(cls, central: Central) -> ServiceStandIn:
        """The 0.6 service of a stand-in central: its own database in the central's data directory (the blob
        store's parent), the central's blobs, PubSub hub and admin token."""
        store = ServiceStore(central.blobs.root.parent / DATABASE_FILE)
        store.insert_user({"userId": USER_ID, "name": "", "email": "", "apiKey": random_id(32)})
        return cls(store, central.blobs, central.hub, central.admin_token, central.mock_pubsub)

    # --- the signed-in user -------------------------------------------------------------------------------------

    def user(self) -> dict:
        return self.store.user(USER_ID)

    def signed_in(self, user_id: str, token: str | None) -> bool:
        """`authenticateUserUsingGitHubToken`: is `token` the sign-in of user `user_id`?"""
        return user_id == USER_ID and same_secret(self.sign_in_token, token)

    def has_api_key(self, user_id: str, token: str | None) -> bool:
        """`authenticateUserUsingApiToken`."""
        user = self.store.user(user_id)
        return user is not None and same_secret(user["apiKey"], token)

    # --- services -------------------------------------------------------------------------------------------------

    def create_service(self, service_name: str, user_id: str = USER_ID) -> None:
        if not self.store.insert_service({"serviceName": service_name, "userId": user_id, "users": []}):
            raise ServiceError(500, "Service with this name already exists.")

    def service(self, service_name: str, status: int = 404) -> dict:
        """The service, or its refusal with `status` (createJob answers 400 where the others answer 404)."""
        service = self.store.service(service_name)
        if service is None:
            raise ServiceError(status, f"Service not found: {service_name}")
        return service

    # --- compute clients -------------------------------------------------------------------------------------------

    def create_compute_client(self, service_names: list[str], compute_client_name: str, user_id: str) -> dict:
        """As createComputeClientHandler: the services are not looked up (a client of a service that does not
        exist is refused later, when it asks for jobs)."""
        compute_client = {
            "userId": user_id,
            "serviceNames": service_names,
            "computeClientId": random_id(12),
            "computeClientPrivateKey": random_id(32),
            "computeClientName": compute_client_name,
            "description": "",
            "computeSlots": [dict(DEFAULT_COMPUTE_SLOT)],
        }
        self.store.insert_compute_client(compute_client)
        return compute_client

    def authenticated_compute_client(self, compute_client_id: str, token: str | None) -> dict:
        """The compute client whose private key `token` is (404, 401 as the service refuses), marked active."""
        compute_client = self.store.compute_client(compute_client_id)
        if compute_client is None:
            raise ServiceError(404, "Compute client not found")
        if not same_secret(compute_client["computeClientPrivateKey"], token):
            raise ServiceError(401, "Unauthorized: incorrect or missing compute client private key")
        self.store.update_compute_client(compute_client_id, {"timestampLastActiveSec": time.time()})
        return compute_client

    # --- PubSub ------------------------------------------------------------------------------------------------------

    def publish(self, message: dict) -> None:
        self.hub.publish(PUBSUB_CHANNEL, message)

    def job_status_changed(self, job: dict, status: str) -> None:
        self.publish({"type": "jobStatusChanged", "serviceName": job["serviceName"], "jobId": job["jobId"],
                      "status": status})
