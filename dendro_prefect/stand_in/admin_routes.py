"""The stand-in's admin routes, our addition standing in for the Dendro GUI: registration, projects and files,
jobs, and the faults the tests inject (an outage of the API, of PubSub). Every call carries the admin token
written next to the stand-in's database."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Request
from pydantic import BaseModel, Field

from ..protocol.models import ComputeResourceApp, JobInputParameter, JobOutputFile, RunMethod
from .pubsub_hub import PubSubMode
from .service import Central
from .store import NotFound


class RegisterRequest(BaseModel):
    computeResourceId: str
    resourceCode: str
    name: str = "dendro-prefect"


class CreateProjectRequest(BaseModel):
    name: str


class SetAppsRequest(BaseModel):
    apps: list[ComputeResourceApp]


class CreateJobInput(BaseModel):
    """An input names a project file by id or by file name."""

    name: str
    fileName: str | None = None
    fileId: str | None = None


class CreateJobRequest(BaseModel):
    computeResourceId: str
    projectId: str
    processorName: str
    inputFiles: list[CreateJobInput]
    outputFiles: list[JobOutputFile]
    inputParameters: list[JobInputParameter] = []
    processorSpec: dict | None = None
    requiredResources: dict | None = None
    runMethod: RunMethod | None = None
    batchId: str | None = None


class CreateJobsRequest(BaseModel):
    jobs: list[CreateJobRequest]


class FailRequestsRequest(BaseModel):
    seconds: float = Field(ge=0)
    status: int = Field(default=503, ge=400, le=599)


class PubSubModeRequest(BaseModel):
    mode: PubSubMode


class RawJobsRequest(BaseModel):
    jobs: list[Any]


def admin_routes(central: Central) -> APIRouter:
    def authenticate(dendro_admin_token: str = Header("")) -> None:
        if not hmac.compare_digest(dendro_admin_token, central.admin_token):
            raise HTTPException(401, "invalid admin token")

    router = APIRouter(dependencies=[Depends(authenticate)])

    @router.post("/api/gui/compute_resources/register")
    def register(body: RegisterRequest) -> dict:
        central.register(body.computeResourceId, body.resourceCode, body.name)
        return {"success": True}

    @router.post("/api/gui/jobs/{job_id}/approve")
    def approve_job(job_id: str) -> dict:
        """The resource owner approves a job held for approval (the real central's GUI route)."""
        central.approve_job(job_id)
        return {"success": True}

    @router.get("/api/admin/compute_resources/{resource_id}")
    def get_resource(resource_id: str) -> dict:
        resource = central.store.resource(resource_id)
        if resource is None:
            raise NotFound(f"compute resource {resource_id} is not registered")
        return {"computeResource": resource, "success": True}

    @router.put("/api/admin/compute_resources/{resource_id}/apps")
    def set_apps(resource_id: str, body: SetAppsRequest) -> dict:
        central.set_apps(resource_id, [a.model_dump(mode="json") for a in body.apps])
        return {"success": True}

    @router.post("/api/admin/compute_resources/{resource_id}/publish")
    def publish(resource_id: str, message: Any = Body(...)) -> dict:
        """Publish any message to the resource's channel: to replay or forge PubSub traffic in tests."""
        return {"timetoken": central.hub.publish(resource_id, message), "success": True}

    @router.post("/api/admin/projects")
    def create_project(body: CreateProjectRequest) -> dict:
        return {"projectId": central.store.create_project(body.name), "success": True}

    @router.get("/api/admin/projects/{project_id}/files")
    def list_files(project_id: str) -> dict:
        central.store.require_project(project_id)
        return {"files": central.store.files(project_id), "success": True}

    @router.put("/api/admin/projects/{project_id}/files/{file_name:path}")
    async def upload_file(project_id: str, file_name: str, request: Request) -> dict:
        central.store.require_project(project_id)
        key = f"projects/{project_id}/files/{file_name}"
        with central.blobs.writer(key) as handle:
            async for chunk in request.stream():
                handle.write(chunk)
        file_id = central.store.add_file(project_id, file_name, central.blobs.size(key) or 0, key)
        return {"fileId": file_id, "success": True}

    def create(body: CreateJobRequest) -> str:
        return central.create_job(
            compute_resource_id=body.computeResourceId,
            project_id=body.projectId,
            processor_name=body.processorName,
            input_files=[i.model_dump() for i in body.inputFiles],
            output_files=[o.model_dump(mode="json", exclude_none=True) for o in body.outputFiles],
            input_parameters=[p.model_dump(mode="json", exclude_none=True) for p in body.inputParameters],
            processor_spec=body.processorSpec,
            required_resources=body.requiredResources,
            run_method=body.runMethod,
            batch_id=body.batchId,
        )["jobId"]

    @router.post("/api/admin/jobs")
    def create_job(body: CreateJobRequest) -> dict:
        return {"jobId": create(body), "success": True}

    @router.post("/api/admin/job_batches")
    def create_jobs(body: CreateJobsRequest) -> dict:
        """Many jobs in one call, as the GUI creates a batch (e.g. one spike sort per session)."""
        return {"jobIds": [create(job) for job in body.jobs], "success": True}

    @router.post("/api/admin/compute_resources/{resource_id}/raw_jobs")
    def insert_raw_jobs(resource_id: str, body: RawJobsRequest) -> dict:
        """Store job documents as they are, unvalidated, to serve malformed jobs in tests."""
        return {"jobIds": [central.store.insert_raw_job(resource_id, job) for job in body.jobs], "success": True}

    @router.get("/api/admin/compute_resources/{resource_id}/raw_jobs")
    def get_raw_jobs(resource_id: str) -> dict:
        """The resource's job documents as they are stored (malformed ones too), by id, without private keys."""
        jobs = {job_id: {k: v for k, v in document.items() if k != "jobPrivateKey"} if isinstance(document, dict)
                else document for job_id, document in central.store.raw_jobs(resource_id)}
        return {"jobs": jobs, "success": True}

    @router.get("/api/admin/jobs")
    def list_jobs(request: Request, computeResourceId: str | None = None) -> dict:
        jobs = [central.job_view(j["jobId"], str(request.base_url).rstrip("/")) for j in central.store.jobs(computeResourceId)]
        return {"jobs": jobs, "success": True}

    @router.get("/api/admin/jobs/{job_id}")
    def get_job(job_id: str, request: Request) -> dict:
        return {"job": central.job_view(job_id, str(request.base_url).rstrip("/")), "success": True}

    @router.delete("/api/admin/jobs/{job_id}")
    def delete_job(job_id: str) -> dict:
        central.delete_job(job_id)
        return {"success": True}

    @router.post("/api/admin/faults/fail_requests")
    def fail_requests(body: FailRequestsRequest) -> dict:
        """An outage of the API for `seconds` from now (0 ends one): see _OutageMiddleware."""
        central.fail_requests(body.seconds, body.status)
        return {"success": True}

    @router.put("/api/admin/faults/pubsub")
    def set_pubsub(body: PubSubModeRequest) -> dict:
        """PubSub "up", "down" or "duplicate-shuffled" (see PubSubHub)."""
        central.hub.set_mode(body.mode)
        return {"success": True}

    return router
