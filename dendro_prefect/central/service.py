"""What the stand-in central does, apart from HTTP: jobs, files, outputs and the PubSub messages.

Routes stay thin; every rule of the protocol (transitions, outputs on completion, which message a
change publishes) lives here once.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from ..protocol.models import JobStatusUpdate, ProcessorSpec, RequiredResources, RunMethod, parse
from .blobs import BlobStore
from .pubsub import PubSubHub
from .store import NotFound, Store, apply_status, new_id


def output_blob_key(project_id: str, job_id: str, output_name: str) -> str:
    return f"dendro-outputs/{project_id}/{job_id}/{output_name}"


def dendro_uri(project_id: str, file: dict) -> str:
    return f"dendro:?project={project_id}&file_id={file['fileId']}&label={file['fileName']}"


@dataclass
class Central:
    store: Store
    blobs: BlobStore
    hub: PubSubHub
    admin_token: str
    mock_pubsub: bool = False
    # Fault injection (admin only): until this monotonic time, API requests answer `_failing_status`.
    _failing_until: float = 0.0
    _failing_status: int = 503

    # --- faults -------------------------------------------------------------------------------------------

    def fail_requests(self, seconds: float, status: int = 503) -> None:
        """Answer every compute-resource and job-side request with `status` for `seconds` from now
        (0 ends an outage early): an outage of the central as its clients see it."""
        self._failing_status = status
        self._failing_until = time.monotonic() + seconds

    def failing_status(self) -> int | None:
        """The status API requests answer now, or None when the central is up."""
        return self._failing_status if time.monotonic() < self._failing_until else None

    # --- jobs ---------------------------------------------------------------------------------------------

    def create_job(
        self,
        *,
        compute_resource_id: str,
        project_id: str,
        processor_name: str,
        input_files: list[dict],
        output_files: list[dict],
        input_parameters: list[dict],
        processor_spec: dict | None,
        required_resources: dict | None,
        run_method: RunMethod | None,
        batch_id: str | None = None,
        user_id: str = "admin",
    ) -> dict:
        """Create a pending job as the GUI would; the processor spec comes from the request or from
        the spec the compute resource reported."""
        resource = self.store.resource(compute_resource_id)
        if resource is None:
            raise NotFound(f"compute resource {compute_resource_id} is not registered")
        self.store.require_project(project_id)
        if processor_spec is None:
            processor_spec = next(
                (p for app in (resource["spec"] or {}).get("apps", []) for p in app.get("processors", [])
                 if p.get("name") == processor_name),
                None,
            )
            if processor_spec is None:
                raise NotFound(f"compute resource {compute_resource_id} reports no processor {processor_name}")
        spec = parse(ProcessorSpec, processor_spec, "processor spec")
        resources = parse(RequiredResources | None, required_resources, "requiredResources")
        inputs = []
        for item in input_files:
            file = self.store.file(item["fileId"]) if item.get("fileId") else self.store.file_by_name(project_id, item["fileName"])
            inputs.append({"name": item["name"], "fileId": file["fileId"], "fileName": file["fileName"]})
        job_id = f"{project_id}.{new_id()}"
        document = {
            "projectId": project_id,
            "jobId": job_id,
            "jobPrivateKey": secrets.token_hex(16),
            "userId": user_id,
            "processorName": processor_name,
            "inputFiles": inputs,
            "inputFileIds": [i["fileId"] for i in inputs],
            "inputParameters": input_parameters,
            "outputFiles": output_files,
            "requiredResources": resources.model_dump() if resources else None,
            "runMethod": run_method,
            "timestampCreated": time.time(),
            "computeResourceId": compute_resource_id,
            "status": "pending",
            "processorSpec": spec.model_dump(mode="json", exclude_none=True),
        }
        if batch_id:
            document["batchId"] = batch_id
        for output in output_files:
            output["fileId"] = self.store.add_file(project_id, output["fileName"], 0, "", job_id)
        self.store.create_job(document)
        self._announce("newPendingJob", document)
        return document

    def set_job_status(self, job_id: str, update: JobStatusUpdate) -> None:
        document = self.store.job(job_id)
        apply_status(document, update.status, update.error, bool(update.force_update))
        if update.status == "completed":
            self._create_outputs(document, update.output_file_sizes or {})
        self.store.save_job(document)
        self._announce("jobStatusChanged", document)

    def delete_job(self, job_id: str) -> None:
        """A GUI deletion publishes nothing, as in the real central."""
        self.store.delete_job(job_id)

    def _create_outputs(self, document: dict, sizes: dict[str, int]) -> None:
        file_ids = []
        for output in document["outputFiles"]:
            key = output_blob_key(document["projectId"], document["jobId"], output["name"])
            size = sizes.get(output["name"], self.blobs.size(key) or 0)
            output["fileId"] = self.store.add_file(document["projectId"], output["fileName"], size, key, document["jobId"])
            file_ids.append(output["fileId"])
        document["outputFileIds"] = file_ids

    def _announce(self, message_type: str, document: dict) -> None:
        if not isinstance(document.get("computeResourceId"), str):
            return  # a raw job (admin `raw_jobs`) that names no compute resource has no channel
        message = {
            "type": message_type,
            "projectId": document.get("projectId"),
            "computeResourceId": document["computeResourceId"],
            "jobId": document["jobId"],
        }
        if message_type == "jobStatusChanged":
            message["status"] = document["status"]
        self.hub.publish(document["computeResourceId"], message)

    # --- apps -----------------------------------------------------------------------------------------------

    def set_apps(self, resource_id: str, apps: list[dict]) -> None:
        self.store.set_apps(resource_id, apps)
        self.hub.publish(resource_id, {"type": "computeResourceAppsChanaged", "computeResourceId": resource_id})

    # --- views ------------------------------------------------------------------------------------------------

    def job_view(self, job_id: str, base_url: str) -> dict:
        """A job for the admin: without its private key, with download URLs of its outputs."""
        document = self.store.job(job_id)
        document.pop("jobPrivateKey", None)
        document.pop("dandiApiKey", None)
        for output in document["outputFiles"]:
            if document["status"] == "completed":
                output["downloadUrl"] = self.download_url(base_url, self.store.file(output["fileId"])["blobKey"])
        console_key = output_blob_key(document["projectId"], job_id, "_console_output")
        if self.blobs.size(console_key) is not None:
            document["consoleOutputUrl"] = self.download_url(base_url, console_key)
        return document

    def download_url(self, base_url: str, key: str) -> str:
        return self.blobs.signed_url(base_url, key, "GET")
