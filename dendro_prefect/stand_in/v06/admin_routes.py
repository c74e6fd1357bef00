"""Admin routes of the 0.6 service stand-in, our addition standing in for the service's web app, for tests and
the demo: services and their apps, compute slots, the signed-in user's jobs (with their private keys), and
the user's API key. Every call carries the stand-in's admin token (header `dendro-admin-token`), as the 0.2
admin routes; refusals are FastAPI's `{"detail": ...}` with the service's status codes."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, HTTPException, Request
from pydantic import BaseModel

from ...protocol.v06.models import AppSpecification, ComputeSlot, CreateJobRequest
from . import jobs
from .apps import add_service_app
from .service import Caller, ServiceError, ServiceStandIn, job_with_key, same_secret

PREFIX = "/api/admin/v06"


class CreateServiceBody(BaseModel):
    serviceName: str


class AddServiceAppBody(BaseModel):
    appSpecification: AppSpecification
    appSpecificationUri: str = ""
    appSpecificationCommit: str = ""


class ComputeSlotsBody(BaseModel):
    computeSlots: list[ComputeSlot]


def admin_routes(stand_in: ServiceStandIn) -> APIRouter:
    def authenticate(dendro_admin_token: str = Header("")) -> None:
        if not same_secret(stand_in.sign_in_token, dendro_admin_token):
            raise HTTPException(401, "invalid admin token")

    router = APIRouter(prefix=PREFIX, dependencies=[Depends(authenticate)])

    def refused(refusal: ServiceError) -> HTTPException:
        return HTTPException(refusal.status, refusal.message)

    @router.get("/user")
    def user() -> dict:
        """The signed-in user's id and API key (the key a job submitter's calls carry)."""
        document = stand_in.user()
        return {"userId": document["userId"], "apiKey": document["apiKey"]}

    @router.post("/services")
    def create_service(body: CreateServiceBody) -> dict:
        try:
            stand_in.create_service(body.serviceName)
        except ServiceError as refusal:
            raise refused(refusal) from None
        return {"serviceName": body.serviceName}

    @router.post("/services/{service_name}/apps")
    def add_app(service_name: str, body: AddServiceAppBody) -> dict:
        try:
            app = add_service_app(stand_in, service_name, body.appSpecification, body.appSpecificationUri,
                                  body.appSpecificationCommit)
        except ServiceError as refusal:
            raise refused(refusal) from None
        return {"serviceApp": app}

    @router.get("/compute_clients/{compute_client_id}")
    def compute_client(compute_client_id: str) -> dict:
        document = stand_in.store.compute_client(compute_client_id)
        if document is None:
            raise HTTPException(404, "Compute client not found")
        return {"computeClient": {**document, "computeClientPrivateKey": None}}

    @router.put("/compute_clients/{compute_client_id}/compute_slots")
    def set_compute_slots(compute_client_id: str, body: ComputeSlotsBody) -> dict:
        """What the compute client's page in the web app sets (setComputeClientInfo's `computeSlots`)."""
        if stand_in.store.compute_client(compute_client_id) is None:
            raise HTTPException(404, "Compute client not found")
        slots = [slot.model_dump(mode="json") for slot in body.computeSlots]
        stand_in.store.update_compute_client(compute_client_id, {"computeSlots": slots})
        return {"computeSlots": slots}

    @router.post("/jobs")
    def create_job(body: CreateJobRequest, request: Request) -> dict:
        """createJob as the signed-in user (with the user's API key), memoization and all."""
        caller = Caller(stand_in.user()["apiKey"], str(request.base_url).rstrip("/"))
        try:
            job = jobs.create_job(stand_in, body, caller)["job"]
        except ServiceError as refusal:
            raise refused(refusal) from None
        return {"jobId": job["jobId"], "job": job}

    @router.get("/jobs")
    def list_jobs(serviceName: str | None = None) -> dict:
        return {"jobs": [job_with_key(job) for job in stand_in.store.jobs(service_name=serviceName)]}

    @router.get("/jobs/{job_id}")
    def get_job(job_id: str) -> dict:
        job = stand_in.store.job(job_id)
        if job is None:
            raise HTTPException(404, "Job not found")
        return {"job": job_with_key(job)}

    @router.delete("/jobs/{job_id}")
    def delete_job(job_id: str) -> dict:
        """As the service's deleteJobs: the job goes, nothing is published."""
        stand_in.store.delete_jobs([job_id])
        return {}

    return router
