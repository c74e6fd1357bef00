"""The 0.6 service stand-in's calls that a running job's SDK makes about files, each with the job's private key:
getSignedUploadUrl (outputs, console output, resource log, other files), finalizeMultipartUpload,
cancelMultipartUpload, setOutputFileUrl, getSignedDownloadUrl and getDandiApiKey, as requestHandlers.ts has them.

What the service does, followed here, that may surprise:
- Uploads are not tied to the job's status: a finished job's key still gets upload URLs.
- An "other" file that exists already is refused with 400, yet recorded a second time (the service's handler
  answers and carries on). Its size limit (1 GiB) is checked only for other files.
- getSignedDownloadUrl answers input URLs unchanged: the service resolves DANDI archive URLs to signed ones
  (a HEAD request to DANDI with the job's DANDI_API_KEY secret), which the stand-in cannot reach.
- getDandiApiKey hands the key only to compute clients of user github|magland: never here.
"""

from __future__ import annotations

import re

from ...protocol.v06.models import (
    CancelMultipartUploadRequest,
    FinalizeMultipartUploadRequest,
    GetDandiApiKeyRequest,
    GetSignedDownloadUrlRequest,
    GetSignedUploadUrlRequest,
    SetOutputFileUrlRequest,
)
from . import files
from .service import Caller, ServiceError, ServiceStandIn, same_secret

MAX_OTHER_FILE_SIZE = 1024 * 1024 * 1024 + 10
OTHER_NAME_PART = re.compile(r"^[a-zA-Z0-9_-]+(\.[a-zA-Z0-9_-]+)*$")


def _job_of(stand_in: ServiceStandIn, job_id: str, caller: Caller, *, missing_key_first: bool = False,
            wrong_key_status: int = 401) -> dict:
    """The job whose private key the caller holds, refused as each handler refuses (they check in two orders,
    and two of them answer a wrong key with 403)."""
    if missing_key_first and not caller.token:
        raise ServiceError(400, "Job private key must be provided")
    job = stand_in.store.job(job_id)
    if job is None:
        raise ServiceError(404, "Job not found")
    if not caller.token:
        raise ServiceError(400, "Job private key must be provided")
    if not same_secret(job["jobPrivateKey"], caller.token):
        message = "Unauthorized" if wrong_key_status == 403 else "Unauthorized: incorrect or missing job private key"
        raise ServiceError(wrong_key_status, message)
    return job


def get_signed_upload_url(stand_in: ServiceStandIn, request: GetSignedUploadUrlRequest, caller: Caller) -> dict:
    store = stand_in.store
    job = _job_of(stand_in, request.jobId, caller)
    if request.uploadType == "output":
        if not request.outputName:
            raise ServiceError(400, "Must specify outputName")
        if not any(o["name"] == request.outputName for o in job["jobDefinition"]["outputFiles"]):
            raise ServiceError(400, "Output file not found")
        result = next((o for o in job["outputFileResults"] if o["name"] == request.outputName), None)
        if result is None:
            raise ServiceError(400, "Output file result not found")
        url = result["url"]
        result["size"] = request.size
        store.update_job(job["jobId"], {"outputFileResults": job["outputFileResults"]})
    elif request.uploadType == "consoleOutput":
        url = job["consoleOutputUrl"]
    elif request.uploadType == "resourceUtilizationLog":
        url = job["resourceUtilizationLogUrl"]
    else:
        url = _other_file_url(stand_in, job, request, caller)
    try:
        if request.size < files.PART_SIZE:
            signed_url = files.signed_upload_url(stand_in.blobs, caller.base_url, url)
            return {"type": "getSignedUploadUrlResponse", "signedUrl": signed_url, "downloadUrl": url}
        upload_id, parts = files.initiate_multipart_upload(stand_in.blobs, caller.base_url, url,
                                                           files.number_of_parts(request.size))
    except files.UploadRefused as refusal:
        raise ServiceError(500, str(refusal)) from None
    return {"type": "getSignedUploadUrlResponse", "parts": parts, "uploadId": upload_id, "downloadUrl": url}


def _other_file_url(stand_in: ServiceStandIn, job: dict, request: GetSignedUploadUrlRequest, caller: Caller) -> str:
    name = request.otherName
    if not name:
        raise ServiceError(400, "Must specify otherName")
    if not _valid_other_name(name):
        raise ServiceError(400, "Invalid otherName")
    if request.size > MAX_OTHER_FILE_SIZE:
        raise ServiceError(400, "File size too large")
    exists = any(o["name"] == name for o in job.get("otherFileOutputs") or [])
    definition = job["jobDefinition"]
    url = files.file_url(caller.base_url, job["serviceName"], definition["appName"], definition["processorName"],
                         job["jobId"], "other", name)
    others = [*(job.get("otherFileOutputs") or []), {"name": name, "url": url}]
    stand_in.store.update_job(job["jobId"], {"otherFileOutputs": others})
    if exists:
        raise ServiceError(400, "Other file already exists")
    return url


def _valid_other_name(name: str) -> bool:
    """`isValidOtherName`: 1 to 6 slash-separated parts of up to 64 letters, digits, `_`, `-` and inner dots."""
    parts = name.split("/")
    return len(parts) <= 6 and all(0 < len(part) <= 64 and OTHER_NAME_PART.match(part) for part in parts)


def finalize_multipart_upload(stand_in: ServiceStandIn, request: FinalizeMultipartUploadRequest,
                              caller: Caller) -> dict:
    _job_of(stand_in, request.jobId, caller)
    parts = [(part.PartNumber, part.ETag) for part in request.parts]
    try:
        files.finalize_multipart_upload(stand_in.blobs, request.url, request.uploadId, parts, request.size)
    except files.UploadRefused as refusal:
        raise ServiceError(500, str(refusal)) from None
    return {"type": "finalizeMultipartUploadResponse"}


def cancel_multipart_upload(stand_in: ServiceStandIn, request: CancelMultipartUploadRequest, caller: Caller) -> dict:
    _job_of(stand_in, request.jobId, caller)
    try:
        files.cancel_multipart_upload(stand_in.blobs, request.url, request.uploadId)
    except files.UploadRefused as refusal:
        raise ServiceError(500, str(refusal)) from None
    return {"type": "cancelMultipartUploadResponse"}


def get_signed_download_url(stand_in: ServiceStandIn, request: GetSignedDownloadUrlRequest, caller: Caller) -> dict:
    job = _job_of(stand_in, request.jobId, caller)
    if not any(f["url"] == request.url for f in job["jobDefinition"]["inputFiles"]):
        raise ServiceError(500, "Cannot generate signed download URL. No input file with this URL in job.")
    return {"type": "getSignedDownloadUrlResponse", "signedUrl": request.url}


def set_output_file_url(stand_in: ServiceStandIn, request: SetOutputFileUrlRequest, caller: Caller) -> dict:
    job = _job_of(stand_in, request.jobId, caller, missing_key_first=True, wrong_key_status=403)
    output = _runtime_output(job, request.outputName, "Output url is not determined at run time")
    result = next((o for o in job["outputFileResults"] if o["name"] == output["name"]), None)
    if result is None:
        raise ServiceError(400, "Output file result not found")
    if result["url"]:
        raise ServiceError(400, "Output file url is already set")
    results = [{**o, "url": request.url} if o["name"] == request.outputName else o for o in job["outputFileResults"]]
    stand_in.store.update_job(job["jobId"], {"outputFileResults": results,
                                              "outputFileUrlList": [o["url"] for o in results]})
    return {"type": "setOutputFileUrlResponse"}


def get_dandi_api_key(stand_in: ServiceStandIn, request: GetDandiApiKeyRequest, caller: Caller) -> dict:
    job = _job_of(stand_in, request.jobId, caller, missing_key_first=True, wrong_key_status=403)
    _runtime_output(job, request.outputName,
                    "Cannot get DANDI API key because output url is not determined at run time")
    if not job["computeClientId"]:
        raise ServiceError(400, "Job does not have a compute client id")
    compute_client = stand_in.store.compute_client(job["computeClientId"])
    if compute_client is None:
        raise ServiceError(404, "Compute client not found")
    if compute_client["userId"] != "github|magland":
        raise ServiceError(403, "For now, only compute clients owned by magland are allowed to get Dandi API keys.")
    key = next((s["value"] for s in job["secrets"] or [] if s["name"] == "DANDI_API_KEY"), None)
    if not key:
        raise ServiceError(404, "DANDI_API_KEY not found in job secrets")
    return {"type": "getDandiApiKeyResponse", "dandiApiKey": key}


def _runtime_output(job: dict, output_name: str, not_at_runtime: str) -> dict:
    """The running job's output whose URL is determined at run time."""
    if job["status"] != "running":
        raise ServiceError(400, "Job is not running")
    output = next((o for o in job["jobDefinition"]["outputFiles"] if o["name"] == output_name), None)
    if output is None:
        raise ServiceError(400, "Output name not found in job definition")
    if not output.get("urlDeterminedAtRuntime"):
        raise ServiceError(400, not_at_runtime)
    return output
