"""The registration page of a 0.6 compute client, `/register_compute_client/<service>/<name>`, as the service's
web app has it (RegisterComputeClientPage.tsx): the signed-in user presses "Register compute client", the
page creates the client (createComputeClient, for that one service, with the user's sign-in) and shows the
code to paste into the compute client: base64 of JSON {computeClientName, computeClientId,
computeClientPrivateKey}.

The stand-in's one user is signed in for whoever opens the page, as its 0.2 registration link needs no
sign-in either: the stand-in listens on loopback only. Another site's page could make a browser press the
button, but could not read the code.
"""

from __future__ import annotations

import base64
from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from ...protocol.v06.models import CreateComputeClientRequest, RegistrationCode
from .compute_clients import create_compute_client
from .service import USER_ID, Caller, ServiceStandIn

PAGE_PATH = "/register_compute_client/{service_name}/{compute_client_name}"


def registration_code(compute_client_name: str, compute_client_id: str, private_key: str) -> str:
    """`btoa(JSON.stringify({...}))`, its keys in the page's order."""
    code = RegistrationCode(computeClientName=compute_client_name, computeClientId=compute_client_id,
                            computeClientPrivateKey=private_key)
    return base64.b64encode(code.model_dump_json().encode()).decode()


def registration_page_routes(stand_in: ServiceStandIn) -> APIRouter:
    router = APIRouter()

    def page(service_name: str, compute_client_name: str, body: str) -> str:
        return (f"<html><body><h3>Register compute client</h3><p>Service: {escape(service_name)}</p>"
                f"<p>Compute client name: {escape(compute_client_name)}</p><hr/>{body}</body></html>")

    @router.get(PAGE_PATH, response_class=HTMLResponse)
    def show(service_name: str, compute_client_name: str) -> str:
        button = '<form method="post"><button type="submit">Register compute client</button></form>'
        return page(service_name, compute_client_name, f"<p>Signed in as {escape(USER_ID)}</p>{button}")

    @router.post(PAGE_PATH, response_class=HTMLResponse)
    def register(service_name: str, compute_client_name: str, request: Request) -> str:
        request_body = CreateComputeClientRequest(serviceNames=[service_name], computeClientName=compute_client_name,
                                                  userId=USER_ID)
        caller = Caller(stand_in.sign_in_token, str(request.base_url).rstrip("/"))
        answer = create_compute_client(stand_in, request_body, caller)
        code = registration_code(compute_client_name, answer["computeClientId"], answer["computeClientPrivateKey"])
        return page(service_name, compute_client_name,
                    f"<h3>Use the following code to register the compute client:</h3><pre>{code}</pre>")

    return router
