"""The 0.6 service stand-in's calls about compute clients: createComputeClient (the registration page's call,
signed in), getPubsubSubscription and pingComputeClients, as requestHandlers.ts has them."""

from __future__ import annotations

from ...protocol.v06.models import (
    CreateComputeClientRequest,
    GetPubsubSubscriptionRequest,
    PingComputeClientsRequest,
)
from .service import PUBSUB_CHANNEL, Caller, ServiceError, ServiceStandIn

MOCK_SUBSCRIBE_KEY = "mock-subscribe-key"  # what a stand-in started with --mock-pubsub answers (clients then poll)


def create_compute_client(stand_in: ServiceStandIn, request: CreateComputeClientRequest, caller: Caller) -> dict:
    if not stand_in.signed_in(request.userId, caller.token):
        raise ServiceError(401, "Unauthorized")
    compute_client = stand_in.create_compute_client(request.serviceNames, request.computeClientName, request.userId)
    return {"type": "createComputeClientResponse", "computeClientId": compute_client["computeClientId"],
            "computeClientPrivateKey": compute_client["computeClientPrivateKey"]}


def get_pubsub_subscription(stand_in: ServiceStandIn, request: GetPubsubSubscriptionRequest, caller: Caller) -> dict:
    """PubNub's coordinates on the stand-in's PubNub-compatible hub: one channel for all services, the client's id
    as its user. Protocol "1" (the service's ephemeri PubSub, which dendro 0.6.22 does not use) is not served: the
    service answers 500 where it is not configured, as here."""
    if not request.computeClientId:
        raise ServiceError(400, "Must specify computeClientId in request")
    stand_in.authenticated_compute_client(request.computeClientId, caller.token)
    protocol_version = request.protocolVersion or "old"
    if protocol_version == "1":
        raise ServiceError(500, "EPHEMERI_PUBSUB_URL not set")
    if protocol_version != "old":
        raise ServiceError(400, "Invalid protocolVersion")
    key = MOCK_SUBSCRIBE_KEY if stand_in.mock_pubsub else stand_in.hub.subscribe_key
    subscription = {"pubnubSubscribeKey": key, "pubnubChannel": PUBSUB_CHANNEL, "pubnubUser": request.computeClientId}
    return {"type": "getPubsubSubscriptionResponse", "subscription": subscription}


def ping_compute_clients(stand_in: ServiceStandIn, request: PingComputeClientsRequest, caller: Caller) -> dict:
    """Anyone may ping; the service is not looked up."""
    stand_in.publish({"type": "pingComputeClients", "serviceName": request.serviceName})
    return {"type": "pingComputeClientsResponse"}
