"""The stand-in's HTTP routes: compute-resource, processor (job-side SDK), blobs, registration (admin: admin_routes).
The Dendro 0.6 service API is served beside them by `v06.routes.service_router`, with a store of its own.

Authentication as the real central does it: compute-resource calls carry an Ed25519 signature over
the request path; job-side calls carry the job private key. Admin calls (our addition, standing in
for the GUI) carry the admin token written next to the database; they also inject faults: an outage
of the API (`_OutageMiddleware`) and of PubSub (`PubSubHub.set_mode`).

Answers follow the real Dendro 0.2.17 central (tests/integration/test_central_contract.py runs the same
requests against both): a refusal of a compute-resource or job-side call is HTTP 500 with the real
central's `detail` (its routes turn every exception into a 500), a request without the required headers
or with a malformed body 422, a failed registration 401.
"""

from __future__ import annotations

import hmac
from html import escape

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from ..protocol.models import (
    ComputeResourceSpec,
    JobStatusUpdate,
    ProtocolError,
    parse,
)
from ..protocol.signing import verify_signature_str
from .admin_routes import admin_routes
from .service import Central, JobRefused, RegistrationRefused, dendro_uri, output_blob_key
from .store import NotFound, TransitionError
from .v06.routes import CALLS, service_router

COMPUTE_RESOURCE_PREFIX = "/api/compute_resource/compute_resources/{resource_id}"
# What an injected outage takes down: the API of compute resources and of jobs, 0.2's (by prefix) and the 0.6
# service's calls. Blobs, registration, admin and PubSub stay up (PubSub has its own fault switch).
OUTAGE_PREFIXES = ("/api/compute_resource/", "/api/processor/")
OUTAGE_V06_PATHS = frozenset(f"/api/{call}" for call in CALLS)


def create_app(central: Central) -> FastAPI:
    app = FastAPI(title="Dendro central stand-in", docs_url=None, redoc_url=None)
    app.state.central = central
    for exception_type, status_code in ((NotFound, 500), (TransitionError, 500), (JobRefused, 500),
                                        (ProtocolError, 422), (RegistrationRefused, 401)):
        app.add_exception_handler(exception_type, _error_handler(status_code))
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.include_router(_compute_resource_routes(central))
    app.include_router(_processor_routes(central))
    app.include_router(_blob_routes(central))
    app.include_router(_registration_routes(central))
    app.include_router(_web_routes(central))
    app.include_router(admin_routes(central))
    app.include_router(service_router(central))  # the Dendro 0.6 service API (see v06)
    app.include_router(central.hub.router())
    app.add_middleware(_OutageMiddleware, central=central)
    return app


class _OutageMiddleware:
    """While an admin-injected outage lasts, every compute-resource and job-side request answers its
    status (503 by default) before any route sees it, as a central behind a failing gateway would."""

    def __init__(self, app: ASGIApp, central: Central) -> None:
        self.app = app
        self.central = central

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if path.startswith(OUTAGE_PREFIXES) or path in OUTAGE_V06_PATHS:
            status = self.central.failing_status()
            if status is not None:
                detail = f"the central is unavailable (injected outage, HTTP {status})"
                await JSONResponse({"success": False, "detail": detail}, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _error_handler(status_code: int):
    async def handle(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"success": False, "detail": str(error)}, status_code=status_code)

    return handle


async def _validation_error_handler(request: Request, error: RequestValidationError) -> JSONResponse:
    """One line naming the fields, as everywhere else, instead of FastAPI's list of dicts."""
    fields = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
    return JSONResponse({"success": False, "detail": f"malformed request: {fields}"}, status_code=422)


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


class SpecBody(BaseModel):
    spec: dict


# --- compute resource ------------------------------------------------------------------------------------


def _compute_resource_routes(central: Central) -> APIRouter:
    def signed(
        resource_id: str,
        request: Request,
        compute_resource_payload: str = Header(...),
        compute_resource_signature: str = Header(...),
    ) -> str:
        """The request's resource id once its signature verifies (the `compute-resource-id` header is not
        looked at: the path names the resource, as in the real central)."""
        if compute_resource_payload != request.url.path:
            raise HTTPException(500, f"Unexpected payload: {compute_resource_payload}")
        if not verify_signature_str(compute_resource_payload, resource_id, compute_resource_signature):
            raise HTTPException(500, f"Invalid signature: {compute_resource_signature}")
        return resource_id

    def authenticate(resource_id: str = Depends(signed)) -> dict:
        resource = central.store.resource(resource_id)
        if resource is None:
            raise NotFound(f"No compute resource with ID {resource_id}")
        return resource

    router = APIRouter(prefix=COMPUTE_RESOURCE_PREFIX)

    @router.get("/apps")
    def apps(resource: dict = Depends(authenticate)) -> dict:
        return {"apps": resource["apps"], "success": True}

    @router.get("/pubsub_subscription")
    def pubsub_subscription(resource: dict = Depends(authenticate)) -> dict:
        """As the real central: key, channel and user, no server (a controller's configuration names the
        stand-in's hub as its `pubsub_origin`)."""
        resource_id = resource["computeResourceId"]
        key = "mock-subscribe-key" if central.mock_pubsub else central.hub.subscribe_key
        subscription = {"pubnubSubscribeKey": key, "pubnubChannel": resource_id, "pubnubUser": resource_id}
        return {"subscription": subscription, "success": True}

    @router.get("/unfinished_jobs")
    def unfinished_jobs(resource_id: str = Depends(signed)) -> dict:
        """A resource that is not registered has no jobs (the real central does not look it up)."""
        return {"jobs": central.store.unfinished_jobs(resource_id), "success": True}

    @router.put("/spec")
    def put_spec(body: SpecBody, resource: dict = Depends(authenticate)) -> dict:
        spec = parse(ComputeResourceSpec, body.spec, "compute resource spec")
        central.store.set_spec(resource["computeResourceId"], spec.model_dump(mode="json", exclude_none=True))
        return {"success": True}

    return router


# --- job side (the dendro SDK inside the job) -----------------------------------------------------------


def _processor_routes(central: Central) -> APIRouter:
    def authenticate(job_id: str, job_private_key: str = Header(...)) -> dict:
        document = central.store.job(job_id)
        # bytes: compare_digest refuses non-ASCII text, and a malformed job's key may be any text
        if not hmac.compare_digest(str(document.get("jobPrivateKey")).encode(), job_private_key.encode()):
            raise HTTPException(500, f"Invalid job private key for job {job_id}")
        return document

    router = APIRouter(prefix="/api/processor")

    @router.get("/jobs/{job_id}/status")
    def get_status(job_id: str, job_private_key: str = Header(...)) -> dict:
        """A deleted job answers status null: that is how a running job learns it was deleted."""
        try:
            document = authenticate(job_id, job_private_key)
        except NotFound:
            return {"status": None, "success": True}
        return {"status": document["status"], "success": True}

    @router.put("/jobs/{job_id}/status")
    def put_status(job_id: str, update: JobStatusUpdate, document: dict = Depends(authenticate)) -> dict:
        central.set_job_status(job_id, update)
        return {"success": True}

    def parameters(document: dict) -> list[dict]:
        return [{"name": p["name"], "value": p.get("value")} for p in document["inputParameters"]]

    def outputs(document: dict) -> list[dict]:
        return [{"name": o["name"], "skipCloudUpload": o.get("skipCloudUpload")} for o in document["outputFiles"]]

    @router.get("/jobs_v2/{job_id}")
    def job_v2(document: dict = Depends(authenticate)) -> dict:
        inputs = [{"name": i["name"], "dendro_uri": dendro_uri(document["projectId"], i)} for i in document["inputFiles"]]
        return {
            "jobId": document["jobId"], "status": document["status"], "processorName": document["processorName"],
            "inputs": inputs, "inputFolders": [], "outputs": outputs(document), "outputFolders": [],
            "parameters": parameters(document),
        }

    @router.get("/jobs/{job_id}")
    def job_v1(request: Request, document: dict = Depends(authenticate)) -> dict:
        inputs = [
            {"name": i["name"], "url": central.download_url(_base_url(request), central.store.file(i["fileId"])["blobKey"])}
            for i in document["inputFiles"]
        ]
        return {
            "jobId": document["jobId"], "status": document["status"], "processorName": document["processorName"],
            "inputs": inputs, "inputFolders": [], "outputs": outputs(document), "outputFolders": [],
            "parameters": parameters(document),
        }

    @router.get("/jobs/{job_id}/files/{file_id}")
    def file_info(file_id: str, request: Request, document: dict = Depends(authenticate)) -> dict:
        """Any file of the job's project; a pending one (no content yet) is refused."""
        try:
            file = central.store.file(file_id)
        except NotFound:
            file = None
        if file is None or file["projectId"] != document["projectId"]:
            raise HTTPException(500, f"No file with ID {file_id} in project {document['projectId']}")
        if not file["blobKey"]:
            raise HTTPException(500, f"Project file content for {file_id} is not a URL")
        return {"downloadUrl": central.download_url(_base_url(request), file["blobKey"]), "isFolder": False, "success": True}

    @router.get("/jobs/{job_id}/outputs/{output_name}/upload_url")
    def upload_url(output_name: str, request: Request, document: dict = Depends(authenticate)) -> dict:
        """For any output name, as the real central (it does not look the name up)."""
        key = output_blob_key(document["projectId"], document["jobId"], output_name)
        return {"uploadUrl": central.blobs.signed_url(_base_url(request), key, "PUT"), "success": True}

    @router.get("/jobs/{job_id}/outputs/{output_name}/file_id")
    def output_file_id(output_name: str, document: dict = Depends(authenticate)) -> dict:
        output = next((o for o in document["outputFiles"] if o["name"] == output_name), None)
        if output is None:
            raise HTTPException(500, f"No output with name {output_name}")
        return {"fileId": output["fileId"], "success": True}

    return router


# --- blobs -------------------------------------------------------------------------------------------------


def _blob_routes(central: Central) -> APIRouter:
    router = APIRouter(prefix="/blobs")

    def check(method: str, key: str, expires: int, signature: str) -> None:
        reason = central.blobs.check(method, key, expires, signature)
        if reason:
            raise HTTPException(403, reason)

    @router.put("/{key:path}")
    async def put_blob(key: str, expires: int, signature: str, request: Request) -> dict:
        check("PUT", key, expires, signature)
        with central.blobs.writer(key) as handle:
            async for chunk in request.stream():
                handle.write(chunk)
        return {"success": True}

    @router.api_route("/{key:path}", methods=["GET", "HEAD"])
    def get_blob(key: str, expires: int, signature: str) -> FileResponse:
        check("GET", key, expires, signature)
        path = central.blobs.path(key)
        if not path.is_file():
            raise HTTPException(404, "no such blob")
        return FileResponse(path, media_type="application/octet-stream")

    return router


# --- registration ---------------------------------------------------------------------------------------


def _registration_routes(central: Central) -> APIRouter:
    router = APIRouter()

    @router.get("/register-compute-resource/{resource_id}/{code}", response_class=HTMLResponse)
    def register_link(resource_id: str, code: str, name: str = "dendro-prefect") -> str:
        """What opening the printed link does: the stand-in has no users, so the signed code is enough."""
        central.register(resource_id, code, name)
        return f"<p>Compute resource <code>{resource_id}</code> is registered.</p>"

    return router


def _web_routes(central: Central) -> APIRouter:
    router = APIRouter()

    @router.get("/project/{project_id}", response_class=HTMLResponse)
    def project_page(project_id: str) -> str:
        """The Dendro web app's project page, reduced to its jobs: where a flow run's job card links."""
        jobs = [job for job in central.store.jobs() if isinstance(job, dict) and job.get("projectId") == project_id]
        rows = "".join("<tr>" + "".join(f"<td>{escape(str(job.get(key) or ''))}</td>"
                                        for key in ("jobId", "processorName", "status", "error")) + "</tr>"
                       for job in jobs)
        return (f"<h1>Project {escape(project_id)}</h1><table><tr><th>Job</th><th>Processor</th><th>Status</th>"
                f"<th>Error</th></tr>{rows}</table>")

    return router
