"""Pydantic models of the Dendro 0.6 compute-client protocol (magland/dendro, `dendro` 0.6.x on PyPI).

Field names are the wire's (`apiHelpers/types.ts`). Requests are strict as the service is: its
`validateObject` refuses a body with a field it does not know, so ours carry exactly the declared fields.
Answers keep unknown fields (the service may be newer than we are) but the fields we use are typed, so a
malformed job fails at the edge with the offending field named (`..models.parse`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from ..models import PubsubSubscription as PubsubSubscription  # PubNub's coordinates: the same in both

JobStatus = Literal["pending", "starting", "running", "completed", "failed"]
ParameterValue = Union[str, int, float, bool, list[str], list[int], list[float], list[bool], None]


class Request(BaseModel):
    """A request body: no field beyond the declared ones, and absent optional fields are left out."""

    model_config = ConfigDict(extra="forbid")

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class Answer(BaseModel):
    """An answer or a document of the service: unknown fields are kept."""

    model_config = ConfigDict(extra="allow")


# --- apps ------------------------------------------------------------------------------------------------------


class AppProcessorInput(Answer):
    name: str
    description: str
    list: bool | None = None


class AppProcessorOutput(Answer):
    name: str
    description: str
    urlDeterminedAtRuntime: bool | None = None


class AppProcessorParameter(Answer):
    name: str
    type: str
    description: str
    defaultValue: ParameterValue = None
    options: list[Any] | None = None


class AppProcessorAttribute(Answer):
    name: str
    value: Any


class AppProcessor(Answer):
    """A processor carries its own image and executable in 0.6 (an app's, in 0.2)."""

    name: str
    description: str
    label: str
    image: str
    executable: str
    inputs: list[AppProcessorInput]
    outputs: list[AppProcessorOutput]
    parameters: list[AppProcessorParameter]
    attributes: list[AppProcessorAttribute]


class AppSpecification(Answer):
    name: str
    description: str
    processors: list[AppProcessor]

    def processor(self, name: str) -> AppProcessor | None:
        return next((p for p in self.processors if p.name == name), None)


class ServiceApp(Answer):
    serviceName: str
    appName: str
    appSpecificationUri: str
    appSpecificationCommit: str
    appSpecification: AppSpecification


# --- jobs ------------------------------------------------------------------------------------------------------


class JobInputFile(Answer):
    name: str
    fileBaseName: str
    url: str


class JobOutputFile(Answer):
    name: str
    fileBaseName: str
    urlDeterminedAtRuntime: bool | None = None


class JobParameter(Answer):
    name: str
    value: ParameterValue = None


class JobDefinition(Answer):
    """What a job computes; the service memoizes jobs by the hash of this."""

    appName: str
    processorName: str
    inputFiles: list[JobInputFile]
    outputFiles: list[JobOutputFile]
    parameters: list[JobParameter]
    cacheBust: str | None = None


class RequiredResources(Answer):
    numCpus: int = Field(ge=0)
    numGpus: int = Field(ge=0)
    memoryGb: float = Field(ge=0)
    timeSec: float = Field(gt=0)


class JobSecret(Answer):
    name: str
    value: str = Field(repr=False)


class OutputFileResult(Answer):
    name: str
    fileBaseName: str
    url: str
    size: int | None = None


class ServiceJob(Answer):
    """A job as `getRunnableJobsForComputeClient` returns it: its private key included, its secrets never
    (the service hands those to the job's own SDK only)."""

    jobId: str = Field(min_length=1)
    jobPrivateKey: str | None = Field(default=None, repr=False)
    serviceName: str
    userId: str
    batchId: str
    tags: list[str]
    jobDefinition: JobDefinition
    jobDefinitionHash: str
    jobDependencies: list[str]
    requiredResources: RequiredResources
    targetComputeClientIds: list[str] | None = None
    secrets: list[JobSecret] | None = Field(default=None, repr=False)
    outputFileResults: list[OutputFileResult] = []
    consoleOutputUrl: str = ""
    timestampCreatedSec: float
    timestampStartingSec: float | None = None
    timestampStartedSec: float | None = None
    timestampFinishedSec: float | None = None
    canceled: bool
    status: JobStatus
    isRunnable: bool
    error: str | None = None
    computeClientId: str | None = None
    computeClientName: str | None = None

    @property
    def processorName(self) -> str:
        """Where a 0.2 job has it: what runs a job reads either kind alike."""
        return self.jobDefinition.processorName


class ComputeSlot(Answer):
    """What a compute client can run, as the service matches jobs to it (`fitsSlot`)."""

    numCpus: int
    numGpus: int
    memoryGb: float
    timeSec: float
    minNumCpus: int = 0
    minNumGpus: int = 0
    minMemoryGb: float = 0
    minTimeSec: float = 0
    multiplicity: int = 1


# --- requests and answers ----------------------------------------------------------------------------------------


class GetRunnableJobsForComputeClientRequest(Request):
    type: Literal["getRunnableJobsForComputeClientRequest"] = "getRunnableJobsForComputeClientRequest"
    computeClientId: str
    jobId: str | None = None
    singleJob: bool | None = None


class GetRunnableJobsForComputeClientResponse(Answer):
    """The jobs stay documents here: each is parsed alone, so that one malformed job spoils no other."""

    type: Literal["getRunnableJobsForComputeClientResponse"]
    runnableJobs: list[Any]
    runningJobs: list[Any]


class SetJobStatusRequest(Request):
    type: Literal["setJobStatusRequest"] = "setJobStatusRequest"
    jobId: str
    computeClientId: str
    status: JobStatus
    error: str | None = None


class SetJobStatusResponse(Answer):
    type: Literal["setJobStatusResponse"]


class GetJobRequest(Request):
    type: Literal["getJobRequest"] = "getJobRequest"
    jobId: str
    includePrivateKey: bool = False
    computeClientId: str | None = None


class GetJobResponse(Answer):
    type: Literal["getJobResponse"]
    job: dict[str, Any] | None = None  # absent: no such job


class GetPubsubSubscriptionRequest(Request):
    type: Literal["getPubsubSubscriptionRequest"] = "getPubsubSubscriptionRequest"
    computeClientId: str | None = None
    protocolVersion: str | None = None


class GetPubsubSubscriptionResponse(Answer):
    """PubNub's coordinates, as 0.2's: the only ones dendro 0.6.22's daemon uses (it sends no `protocolVersion`)."""

    type: Literal["getPubsubSubscriptionResponse"]
    subscription: PubsubSubscription


class GetServiceAppRequest(Request):
    type: Literal["getServiceAppRequest"] = "getServiceAppRequest"
    serviceName: str
    appName: str


class GetServiceAppResponse(Answer):
    type: Literal["getServiceAppResponse"]
    serviceApp: ServiceApp


class CreateComputeClientRequest(Request):
    """What the service's registration page sends (signed in with GitHub)."""

    type: Literal["createComputeClientRequest"] = "createComputeClientRequest"
    serviceNames: list[str]
    computeClientName: str
    userId: str


class CreateComputeClientResponse(Answer):
    type: Literal["createComputeClientResponse"]
    computeClientId: str
    computeClientPrivateKey: str = Field(repr=False)


class CreateJobRequest(Request):
    """A user's job submission (the SDK's `submit_job`); the stand-in and the tests send it."""

    type: Literal["createJobRequest"] = "createJobRequest"
    serviceName: str
    userId: str = ""
    batchId: str
    tags: list[str]
    jobDefinition: JobDefinition
    requiredResources: RequiredResources
    targetComputeClientIds: list[str] | None = None
    secrets: list[JobSecret]
    jobDependencies: list[str]
    skipCache: bool = False
    rerunFailing: bool = False
    deleteFailing: bool = False


class CreateJobResponse(Answer):
    type: Literal["createJobResponse"]
    job: dict[str, Any]  # without its private key and secrets


class FindJobsRequest(Request):
    type: Literal["findJobsRequest"] = "findJobsRequest"
    userId: str | None = None
    jobId: str | None = None
    processorName: str | None = None
    computeClientId: str | None = None
    batchId: str | None = None
    tags: list[str] | None = None
    serviceName: str | None = None
    appName: str | None = None
    inputFileUrl: str | None = None
    outputFileUrl: str | None = None
    status: JobStatus | list[JobStatus] | None = None
    limit: int | None = None


class FindJobsResponse(Answer):
    type: Literal["findJobsResponse"]
    jobs: list[Any]


class CancelJobRequest(Request):
    """A user's request (the user's API key): the job is marked `canceled`; its status does not change."""

    type: Literal["cancelJobRequest"] = "cancelJobRequest"
    jobId: str


class CancelJobResponse(Answer):
    type: Literal["cancelJobResponse"]


class PingComputeClientsRequest(Request):
    type: Literal["pingComputeClientsRequest"] = "pingComputeClientsRequest"
    serviceName: str


class PingComputeClientsResponse(Answer):
    type: Literal["pingComputeClientsResponse"]


class GetServiceAppsRequest(Request):
    """Exactly one of the two names."""

    type: Literal["getServiceAppsRequest"] = "getServiceAppsRequest"
    appName: str | None = None
    serviceName: str | None = None


class GetServiceAppsResponse(Answer):
    type: Literal["getServiceAppsResponse"]
    serviceApps: list[ServiceApp]


# --- a running job's calls (dendro 0.6.22's SDK, with the job's private key) ---------------------------------------

UploadType = Literal["output", "consoleOutput", "resourceUtilizationLog", "other"]


class GetSignedUploadUrlRequest(Request):
    type: Literal["getSignedUploadUrlRequest"] = "getSignedUploadUrlRequest"
    jobId: str
    uploadType: UploadType
    outputName: str | None = None
    otherName: str | None = None
    size: int
    fallbackFileBaseName: str | None = None  # historic: the service still accepts it


class UploadPartUrl(Answer):
    partNumber: int
    signedUrl: str = Field(repr=False)


class GetSignedUploadUrlResponse(Answer):
    """One `signedUrl` for a file under 1000 MiB, else `parts` of a multipart upload to finalize."""

    type: Literal["getSignedUploadUrlResponse"]
    signedUrl: str | None = Field(default=None, repr=False)
    downloadUrl: str
    parts: list[UploadPartUrl] | None = None
    uploadId: str | None = None


class UploadedPart(BaseModel):
    """A part of a multipart upload as its PUT answered it (S3's names)."""

    model_config = ConfigDict(extra="forbid")

    PartNumber: int
    ETag: str


class FinalizeMultipartUploadRequest(Request):
    type: Literal["finalizeMultipartUploadRequest"] = "finalizeMultipartUploadRequest"
    jobId: str
    url: str
    size: int
    uploadId: str
    parts: list[UploadedPart]


class FinalizeMultipartUploadResponse(Answer):
    type: Literal["finalizeMultipartUploadResponse"]


class CancelMultipartUploadRequest(Request):
    type: Literal["cancelMultipartUploadRequest"] = "cancelMultipartUploadRequest"
    jobId: str
    url: str
    uploadId: str


class CancelMultipartUploadResponse(Answer):
    type: Literal["cancelMultipartUploadResponse"]


class GetSignedDownloadUrlRequest(Request):
    type: Literal["getSignedDownloadUrlRequest"] = "getSignedDownloadUrlRequest"
    jobId: str
    url: str


class GetSignedDownloadUrlResponse(Answer):
    type: Literal["getSignedDownloadUrlResponse"]
    signedUrl: str = Field(repr=False)


class SetOutputFileUrlRequest(Request):
    """For an output whose URL is determined at run time (`urlDeterminedAtRuntime`)."""

    type: Literal["setOutputFileUrlRequest"] = "setOutputFileUrlRequest"
    jobId: str
    outputName: str
    url: str


class SetOutputFileUrlResponse(Answer):
    type: Literal["setOutputFileUrlResponse"]


class GetDandiApiKeyRequest(Request):
    type: Literal["getDandiApiKeyRequest"] = "getDandiApiKeyRequest"
    jobId: str
    outputName: str


class GetDandiApiKeyResponse(Answer):
    type: Literal["getDandiApiKeyResponse"]
    dandiApiKey: str = Field(repr=False)


class RegistrationCode(BaseModel):
    """The code the registration page shows: base64 of this JSON."""

    computeClientName: str
    computeClientId: str = Field(min_length=1)
    computeClientPrivateKey: str = Field(min_length=1, repr=False)


# --- PubSub hints (channel `dendro-compute-clients`, for every service) --------------------------------------------


class NewPendingJobHint(Answer):
    type: Literal["newPendingJob"]
    serviceName: str
    jobId: str


class JobStatusChangedHint(Answer):
    type: Literal["jobStatusChanged"]
    serviceName: str
    jobId: str
    status: JobStatus | None = None


class PingComputeClientsHint(Answer):
    type: Literal["pingComputeClients"]
    serviceName: str


PubsubHint = Annotated[Union[NewPendingJobHint, JobStatusChangedHint, PingComputeClientsHint],
                       Field(discriminator="type")]
