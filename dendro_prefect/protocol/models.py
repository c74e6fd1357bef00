"""Pydantic models of the Dendro 0.2.x wire format (field names as on the wire).

Everything that crosses the boundary from the central, an app spec or PubSub is parsed here, so a
malformed document fails at the edge with the offending field named, never later in a worker.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

RunMethod = Literal["local", "aws_batch", "slurm", "kubernetes"]
JobStatus = Literal["pending", "queued", "starting", "running", "completed", "failed"]
UNFINISHED_STATUSES: tuple[JobStatus, ...] = ("pending", "queued", "starting", "running")
FINISHED_STATUSES: tuple[JobStatus, ...] = ("completed", "failed")


class ProtocolError(ValueError):
    """A document from the central, an app spec or PubSub does not match the protocol."""


class WireModel(BaseModel):
    """Unknown fields are kept: the central may be newer than we are."""

    model_config = ConfigDict(extra="allow")


# --- app spec (spec.json) ----------------------------------------------------------------------


class SpecInput(WireModel):
    name: str
    description: str | None = None
    list: bool = False


class SpecOutput(WireModel):
    name: str
    description: str | None = None


class SpecParameter(WireModel):
    name: str
    description: str | None = None
    type: str
    default: Any = None
    options: list[Any] | None = None
    secret: bool = False


class SpecAttribute(WireModel):
    name: str
    value: Any


class SpecTag(WireModel):
    tag: str


class ProcessorSpec(WireModel):
    name: str
    description: str | None = None
    label: str | None = None
    inputs: list[SpecInput]
    inputFolders: list[SpecInput] | None = None
    outputs: list[SpecOutput]
    outputFolders: list[SpecOutput] | None = None
    parameters: list[SpecParameter]
    attributes: list[SpecAttribute] = []
    tags: list[SpecTag] = []


class AppSpec(WireModel):
    """An app's spec.json."""

    name: str
    description: str | None = None
    appImage: str | None = None
    appExecutable: str | None = None
    executable: str | None = None
    processors: list[ProcessorSpec]

    def processor(self, name: str) -> ProcessorSpec | None:
        return next((p for p in self.processors if p.name == name), None)


class ComputeResourceApp(WireModel):
    name: str
    specUri: str


class ComputeResourceSpec(WireModel):
    """What the controller reports to the central with `PUT .../spec`."""

    apps: list[AppSpec]
    defaultJobRunMethod: RunMethod | None = None
    availableJobRunMethods: list[RunMethod] | None = None


# --- jobs ----------------------------------------------------------------------------------------


class JobInputFile(WireModel):
    name: str
    fileId: str
    fileName: str
    isFolder: bool | None = None


class JobInputParameter(WireModel):
    name: str
    value: Any = None
    secret: bool | None = None


class JobOutputFile(WireModel):
    name: str
    fileName: str
    fileId: str | None = None
    isFolder: bool | None = None
    skipCloudUpload: bool | None = None


class RequiredResources(WireModel):
    numCpus: int = Field(ge=0)
    numGpus: int = Field(ge=0)
    memoryGb: float = Field(ge=0)
    timeSec: float = Field(gt=0)


class DendroJob(WireModel):
    """A job as `unfinished_jobs` returns it, private key included."""

    projectId: str
    jobId: str = Field(min_length=1)
    jobPrivateKey: str = Field(repr=False)
    userId: str
    processorName: str
    inputFiles: list[JobInputFile]
    inputFileIds: list[str] = []
    inputParameters: list[JobInputParameter]
    outputFiles: list[JobOutputFile]
    requiredResources: RequiredResources | None = None
    runMethod: RunMethod | None = None
    timestampCreated: float
    computeResourceId: str
    status: JobStatus
    batchId: str | None = None
    error: str | None = None
    processorVersion: str | None = None
    timestampQueued: float | None = None
    timestampStarting: float | None = None
    timestampStarted: float | None = None
    timestampFinished: float | None = None
    outputFileIds: list[str] | None = None
    processorSpec: ProcessorSpec
    dandiApiKey: str | None = Field(default=None, repr=False)
    deleted: bool | None = None
    pendingApproval: bool | None = None


class PubsubSubscription(WireModel):
    """Where to subscribe: which PubNub server is the configuration's (`pubsub_origin`), not the central's."""

    pubnubSubscribeKey: str
    pubnubChannel: str
    pubnubUser: str

    @property
    def is_mock(self) -> bool:
        return self.pubnubSubscribeKey == "mock-subscribe-key"


class JobStatusUpdate(WireModel):
    """Body of `PUT /api/processor/jobs/{id}/status`."""

    status: JobStatus
    error: str | None = None
    force_update: bool | None = None
    output_file_sizes: dict[str, int] | None = None


# --- PubSub messages -------------------------------------------------------------------------------


class NewPendingJobMessage(WireModel):
    type: Literal["newPendingJob"]
    projectId: str
    computeResourceId: str
    jobId: str


class JobStatusChangedMessage(WireModel):
    type: Literal["jobStatusChanged"]
    projectId: str
    computeResourceId: str
    jobId: str
    status: JobStatus | None = None


class AppsChangedMessage(WireModel):
    """The type name carries the protocol's typo on the wire."""

    type: Literal["computeResourceAppsChanaged"]
    computeResourceId: str


PubsubMessage = Annotated[
    Union[NewPendingJobMessage, JobStatusChangedMessage, AppsChangedMessage], Field(discriminator="type")
]

M = TypeVar("M")


def describe_validation_error(error: ValidationError) -> str:
    """One line naming every offending field, e.g. `processorSpec.inputs: Field required`."""
    parts = []
    for item in error.errors():
        location = ".".join(str(p) for p in item["loc"]) or "(document)"
        parts.append(f"{location}: {item['msg']}")
    return "; ".join(parts)


def parse(kind: type[M] | Any, data: Any, what: str) -> M:
    """Validate `data` as `kind`, raising a one-line ProtocolError that says what and where."""
    try:
        return TypeAdapter(kind).validate_python(data)
    except ValidationError as error:
        raise ProtocolError(f"malformed {what}: {describe_validation_error(error)}") from None
