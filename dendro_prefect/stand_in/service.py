"""What the stand-in central does, apart from HTTP: jobs, files, outputs and the PubSub messages.

Routes stay thin; every rule of the protocol (transitions, outputs on completion, which message a
change publishes) lives here once.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from ..protocol.models import JobStatusUpdate, ProcessorSpec, RequiredResources, RunMethod, parse
from ..protocol.signing import verify_resource_code
from .blobs import BlobStore
from .pubsub_hub import PubSubHub
from .store import NotFound, Store, apply_status, new_id

# The real central holds a new job for the resource owner's approval once this many jobs of its project are
# pending or running (`starting` and `queued` ones do not count).
MAX_PENDING_OR_RUNNING_JOBS_WITHOUT_APPROVAL = 10


def output_blob_key(project_id: str, job_id: str, output_name: str) -> str:
    return f"dendro-outputs/{project_id}/{job_id}/{output_name}"


def dendro_uri(project_id: str, file: dict) -> str:
    return f"dendro:?project={project_id}&file_id={file['fileId']}&label={file['fileName']}"


class RegistrationRefused(ValueError):
    """A registration code that does not verify (the real central answers 401)."""


class JobRefused(ValueError):
    """The GUI's refusal of a job that does not match its processor spec (the real central's words)."""


_PARAMETER_TYPES = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int),
    "float": lambda v: isinstance(v, (int, float)),
    "bool": lambda v: isinstance(v, bool),
    "List[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "List[int]": lambda v: isinstance(v, list) and all(isinstance(x, int) for x in v),
    "List[float]": lambda v: isinstance(v, list) and all(isinstance(x, (int, float)) for x in v),
    "List[bool]": lambda v: isinstance(v, list) and all(isinstance(x, bool) for x in v),
    "Optional[int]": lambda v: v is None or isinstance(v, int),
    "Optional[float]": lambda v: v is None or isinstance(v, (int, float)),
}


def check_job_against_spec(spec: ProcessorSpec, processor_name: str, inputs: list[dict], outputs: list[dict],
                           parameters: list[dict]) -> None:
    """The real central's check of a new job against its processor spec (inputs, outputs, parameter names,
    required parameters and types), raising JobRefused with its message."""
    if spec.name != processor_name:
        raise JobRefused(f"Processor name mismatch: {spec.name} != {processor_name}")
    folders = {i.name: i for i in spec.inputFolders or []}
    spec_inputs = {i.name: i for i in spec.inputs}
    for item in inputs:
        kind, known = ("input folder", folders) if item.get("isFolder") else ("input", spec_inputs)
        name = item["name"].split("[")[0] if item["name"].endswith("]") else item["name"]
        if name not in known:
            raise JobRefused(f"Processor {kind} not found: {name}")
        if name != item["name"] and not known[name].list:
            raise JobRefused(f"Processor {kind} is not a list: {name}")
    for kind, declared, folder in (("input", spec.inputs, False), ("input folder", spec.inputFolders or [], True)):
        for item in declared:
            if not item.list and not any(i["name"] == item.name and bool(i.get("isFolder")) == folder for i in inputs):
                raise JobRefused(f"Required {kind} not found: {item.name}")
    for item in outputs:
        folder = bool(item.get("isFolder"))
        kind, declared = ("output folder", spec.outputFolders or []) if folder else ("output", spec.outputs)
        if item["name"] not in {o.name for o in declared}:
            raise JobRefused(f"Processor {kind} not found: {item['name']}")
    for kind, declared, folder in (("output", spec.outputs, False), ("output folder", spec.outputFolders or [], True)):
        for item in declared:
            if not any(o["name"] == item.name and bool(o.get("isFolder")) == folder for o in outputs):
                raise JobRefused(f"Required {kind} not found: {item.name}")
    declared_parameters = {p.name: p for p in spec.parameters}
    for parameter in parameters:
        declared = declared_parameters.get(parameter["name"])
        if declared is None:
            raise JobRefused(f"Processor parameter not found: {parameter['name']}")
        check = _PARAMETER_TYPES.get(declared.type)
        if check is None:
            raise JobRefused(f"Unknown type in _parameter_value_is_consistent_with_type: {declared.type}")
        if not check(parameter.get("value")):
            raise JobRefused(f"Parameter value is not consistent with type: {parameter['name']} "
                             f"{parameter.get('value')} {declared.type}")
    given = {p["name"] for p in parameters}
    for declared in spec.parameters:
        if declared.default is None and not declared.type.startswith("Optional[") and declared.name not in given:
            raise JobRefused(f"Required parameter not found: {declared.name}")


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
        """Create a pending job as the real central's GUI route does: checked against its processor spec
        (from the request, or else the spec the compute resource reported), `${job-id}` in output file
        names replaced, the project's earlier jobs that make one of its outputs deleted (with the files
        they made), held for approval once the project has MAX_PENDING_OR_RUNNING_JOBS_WITHOUT_APPROVAL
        jobs pending or running; its outputs are pending files from now on."""
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
        check_job_against_spec(spec, processor_name, input_files, output_files, input_parameters)
        inputs = []
        for item in input_files:
            try:
                file = self.store.file(item["fileId"]) if item.get("fileId") else \
                    self.store.file_by_name(project_id, item["fileName"])
            except NotFound:
                name = item.get("fileName") or item["fileId"]
                raise JobRefused(f"Project input file does not exist: {name}") from None
            inputs.append({"name": item["name"], "fileId": file["fileId"], "fileName": file["fileName"]})
        job_id = f"{project_id}.{new_id()}"
        output_files = [dict(o, fileName=o["fileName"].replace("${job-id}", job_id)) for o in output_files]
        self._replace_outputs(project_id, [o["fileName"] for o in output_files])
        counted = [j for j in self.store.project_jobs(project_id) if j.get("status") in ("pending", "running")]
        parameters = {p.name: p for p in spec.parameters}
        input_parameters = [dict(p, secret=bool(parameters[p["name"]].secret)) for p in input_parameters]
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
            "pendingApproval": len(counted) >= MAX_PENDING_OR_RUNNING_JOBS_WITHOUT_APPROVAL,
        }
        if batch_id:
            document["batchId"] = batch_id
        for output in output_files:
            output["fileId"] = self.store.add_file(project_id, output["fileName"], 0, "", job_id)
        document["outputFileIds"] = [o["fileId"] for o in output_files]
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
        """As the real central: the job and the files it made go (its outputs, pending or not); nothing is
        published."""
        document = self.store.delete_job(job_id)
        if isinstance(document, dict) and isinstance(document.get("projectId"), str):
            self.store.delete_files(document["projectId"], job_id=job_id)

    def _replace_outputs(self, project_id: str, file_names: list[str]) -> None:
        """A new job's outputs replace the files of those names and the jobs that make them."""
        self.store.delete_files(project_id, file_names)
        for job in self.store.project_jobs(project_id):
            if any(isinstance(o, dict) and o.get("fileName") in file_names for o in job.get("outputFiles") or []):
                self.delete_job(job["jobId"])

    def register(self, resource_id: str, code: str, name: str) -> None:
        """A valid code registers (again: as in the real central, a code may be used more than once while it
        is valid); an invalid one is refused, as the real central refuses it (401)."""
        reason = verify_resource_code(code, resource_id)
        if reason:
            raise RegistrationRefused(reason)
        self.store.register_resource(resource_id, name)

    def approve_job(self, job_id: str) -> None:
        """The resource owner's approval of a held job: published as a status change (of the same status),
        as the real central does."""
        document = self.store.job(job_id)
        document["pendingApproval"] = False
        self.store.save_job(document)
        self._announce("jobStatusChanged", document)

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
