"""HTTP of the 0.6 service stand-in: `POST /api/<call>` for each call it serves, the public file URLs and the
multipart part uploads; `service_router` also brings the registration page and the admin routes.

Requests are read as the service reads them: a body that is not exactly the call's request (its `type`, its
fields with their JSON types, no field beyond them, at any depth) is refused with 400 {"error": "Invalid
request"}; the token is the second word of the Authorization header. Answers and refusals are the service's:
JSON, refusals `{"error": ...}` with its status codes, anything unexpected a 500 with the exception's message.
Two leniencies: an optional field sent as null is taken as absent, and a field the request models give a
default (`includePrivateKey`, createJob's `userId`) may be left out, where the service refuses both.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Callable

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from ...protocol.v06.models import (
    CancelJobRequest,
    CancelMultipartUploadRequest,
    CreateComputeClientRequest,
    CreateJobRequest,
    FinalizeMultipartUploadRequest,
    FindJobsRequest,
    GetDandiApiKeyRequest,
    GetJobRequest,
    GetPubsubSubscriptionRequest,
    GetRunnableJobsForComputeClientRequest,
    GetServiceAppRequest,
    GetServiceAppsRequest,
    GetSignedDownloadUrlRequest,
    GetSignedUploadUrlRequest,
    PingComputeClientsRequest,
    SetJobStatusRequest,
    SetOutputFileUrlRequest,
)
from ...protocol.v06.models import Request as ServiceRequest
from ..service import Central
from . import apps, compute_client_jobs, compute_clients, files, job_files, jobs
from .admin_routes import admin_routes
from .registration_page import registration_page_routes
from .service import Caller, ServiceError, ServiceStandIn, bearer_token

logger = logging.getLogger(__name__)

Handler = Callable[[ServiceStandIn, Any, Caller], dict]
CALLS: dict[str, tuple[type[ServiceRequest], Handler]] = {
    "createJob": (CreateJobRequest, jobs.create_job),
    "getJob": (GetJobRequest, jobs.get_job),
    "findJobs": (FindJobsRequest, jobs.find_jobs),
    "cancelJob": (CancelJobRequest, jobs.cancel_job),
    "getRunnableJobsForComputeClient": (GetRunnableJobsForComputeClientRequest, compute_client_jobs.runnable_jobs),
    "setJobStatus": (SetJobStatusRequest, compute_client_jobs.set_job_status),
    "getSignedUploadUrl": (GetSignedUploadUrlRequest, job_files.get_signed_upload_url),
    "finalizeMultipartUpload": (FinalizeMultipartUploadRequest, job_files.finalize_multipart_upload),
    "cancelMultipartUpload": (CancelMultipartUploadRequest, job_files.cancel_multipart_upload),
    "getSignedDownloadUrl": (GetSignedDownloadUrlRequest, job_files.get_signed_download_url),
    "setOutputFileUrl": (SetOutputFileUrlRequest, job_files.set_output_file_url),
    "getDandiApiKey": (GetDandiApiKeyRequest, job_files.get_dandi_api_key),
    "createComputeClient": (CreateComputeClientRequest, compute_clients.create_compute_client),
    "getPubsubSubscription": (GetPubsubSubscriptionRequest, compute_clients.get_pubsub_subscription),
    "pingComputeClients": (PingComputeClientsRequest, compute_clients.ping_compute_clients),
    "getServiceApp": (GetServiceAppRequest, apps.get_service_app),
    "getServiceApps": (GetServiceAppsRequest, apps.get_service_apps),
}


def service_router(central: Central) -> APIRouter:
    """Everything the 0.6 service stand-in serves, beside the central's 0.2 routes."""
    stand_in = ServiceStandIn.beside(central)
    router = APIRouter()
    router.include_router(service_routes(stand_in))
    router.include_router(registration_page_routes(stand_in))
    router.include_router(admin_routes(stand_in))
    return router


def service_routes(stand_in: ServiceStandIn) -> APIRouter:
    router = APIRouter(tags=["dendro 0.6"])
    for name, (model, handler) in CALLS.items():
        router.add_api_route(f"/api/{name}", _endpoint(stand_in, model, handler), methods=["POST"], name=name)

    @router.api_route(files.FILE_PATH_PREFIX + "{path:path}", methods=["GET", "HEAD"])
    def get_file(path: str) -> FileResponse:
        """A job file's public URL, as tempory.net serves the service's."""
        try:
            blob = stand_in.blobs.path(files.FILE_KEY_PREFIX + path)
        except ValueError:
            blob = None
        if blob is None or not blob.is_file():
            raise HTTPException(404, "no such file")
        return FileResponse(blob, media_type="application/octet-stream")

    @router.put(files.PART_ROUTE + "/{key:path}")
    async def put_part(key: str, expires: int, signature: str, request: Request) -> Response:
        """One part of a multipart upload, answered with its ETag as S3 answers."""
        reason = stand_in.blobs.check("PUT", key, expires, signature)
        if reason or not key.startswith(files.PART_KEY_PREFIX):
            raise HTTPException(403, reason or "not a part of an upload")
        digest = hashlib.md5()
        with stand_in.blobs.writer(key) as handle:
            async for chunk in request.stream():
                digest.update(chunk)
                handle.write(chunk)
        return Response(status_code=200, headers={"ETag": files.part_etag(digest.hexdigest())})

    return router


def _endpoint(stand_in: ServiceStandIn, model: type[ServiceRequest], handler: Handler):
    expected_type = model.model_fields["type"].default

    async def endpoint(request: Request) -> JSONResponse:
        parsed = _parse(await request.body(), model, expected_type)
        if parsed is None:
            return JSONResponse({"error": "Invalid request"}, status_code=400)
        caller = Caller(bearer_token(request.headers.get("authorization")), str(request.base_url).rstrip("/"))
        try:
            return JSONResponse(await run_in_threadpool(handler, stand_in, parsed, caller))
        except ServiceError as refusal:
            return JSONResponse({"error": refusal.message}, status_code=refusal.status)
        except Exception as error:  # as the service's handlers: any failure is a 500 with its message
            logger.exception("%s failed", expected_type)
            return JSONResponse({"error": str(error)}, status_code=500)

    return endpoint


def _parse(body: bytes, model: type[ServiceRequest], expected_type: str) -> ServiceRequest | None:
    try:
        document = json.loads(body)
        if not isinstance(document, dict) or document.get("type") != expected_type:
            return None
        parsed = model.model_validate(document, strict=True)
    except (ValueError, ValidationError):
        return None
    return None if _has_unknown_fields(parsed) else parsed


def _has_unknown_fields(value: Any) -> bool:
    """Whether a field the service does not know is anywhere in a parsed request: nested documents are models
    that keep unknown fields (`Answer`s), the request itself refuses them."""
    if isinstance(value, BaseModel):
        return bool(value.model_extra) or any(_has_unknown_fields(v) for v in value.__dict__.values())
    if isinstance(value, list):
        return any(_has_unknown_fields(item) for item in value)
    return False
