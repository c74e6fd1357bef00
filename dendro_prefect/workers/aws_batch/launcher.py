"""Dendro jobs as AWS Batch jobs, through boto3.

One `describe_jobs` call per 100 watched jobs per poll. The CloudWatch log stream of a job is copied
into the flow-run log while it runs (every few seconds, where the stream exists) and at its end. A job
that waits in RUNNABLE too long gets a log line saying why, where AWS tells. A job whose host went away
(a spot instance reclaimed) is submitted again as a new Batch job of the same name. The job's private key
travels as `job_keys` says; the job's request is never logged.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..containers import WORKING_DIR_WRAPPER, container_environment, wrapped
from ..launch import InfrastructureState, Launcher, LaunchError, LaunchRequest, one_line
from .credentials import AwsAccess, AwsClients
from .diagnosis import why_runnable
from .job_definitions import JobDefinitions, is_of_one_job
from .job_keys import IN_OVERRIDES, KEY_VARIABLE, remove_key, secret_name, store_key
from .settings import AwsBatchJobSettings

logger = logging.getLogger(__name__)

UNFINISHED_BATCH_STATUSES = frozenset({"SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING"})
DESCRIBE_PAGE = 100  # describe_jobs takes at most 100 job ids
LOG_GROUP = "/aws/batch/job"
LOG_INTERVAL_SEC = 5.0  # how often a running job's CloudWatch log is read
HOST_FAILURE = "Host EC2*"  # Batch's statusReason when the instance went away (spot reclaim)
JOB_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")


@dataclass
class _Watched:
    """What the launcher keeps of one Batch job: where its log is read up to, and its RUNNABLE story."""

    queue: str = ""
    batch_ids: list[str] = field(default_factory=list)  # its attempts' Batch jobs, the current last
    request: LaunchRequest | None = None  # to run it again
    definition: str = ""  # the job definition it runs: of its own where its key is a secret, else the app's
    notices: list[str] = field(default_factory=list)  # lines for the flow-run log, said once
    log_stream: str | None = None
    log_token: str | None = None
    logs_read_at: float = float("-inf")
    ended: bool = False
    waiting_since: float | None = None  # epoch seconds: while RUNNABLE, since its Batch job was created
    runnable_reported: bool = False
    described: dict = field(default_factory=dict)  # what the last describe_jobs said of it


def job_name(job_id: str) -> str:
    return JOB_NAME_CHARS.sub("-", f"dendro-{job_id}")[:128]


class AwsBatchLauncher(Launcher):
    def __init__(self, settings: AwsBatchJobSettings, access: AwsAccess | None = None,
                 log_interval_sec: float = LOG_INTERVAL_SEC) -> None:
        self.settings = settings
        self._access = access or AwsAccess(settings.aws_credentials_block, settings.region_name)
        self._log_interval_sec = log_interval_sec
        self._aws: AwsClients | None = None
        self._definitions: JobDefinitions | None = None
        self._watched: dict[str, _Watched] = {}

    def _clients(self) -> AwsClients:
        if self._aws is None:
            self._aws = self._access.clients()
        return self._aws

    def _batch(self) -> Any:
        return self._clients().batch

    def _logs(self) -> Any:
        return self._clients().logs

    async def _call(self, what: str, function, *args, **kwargs):
        """A blocking AWS call in a thread; its failure as a one-line LaunchError naming the call."""
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except (ClientError, BotoCoreError) as error:
            raise LaunchError(f"AWS Batch {what} failed: {one_line(error)}") from None

    # --- submit --------------------------------------------------------------------------------------------------

    async def submit(self, request: LaunchRequest) -> str:
        if not request.app_image:
            raise LaunchError(f"app {request.app_name} has no appImage to run on AWS Batch")
        watched = _Watched(queue=self._queue(request), request=request)
        await self._call("job definition", self._deliver_key, watched)
        try:
            response = await self._call("submit_job", self._batch().submit_job, **self._submit_request(watched, 0))
        except LaunchError:
            await asyncio.to_thread(self._forget_key, watched)
            raise
        watched.batch_ids.append(response["jobId"])
        infrastructure_id = f"aws-batch:{response['jobId']}"
        self._watched[infrastructure_id] = watched
        return infrastructure_id

    def _deliver_key(self, watched: _Watched) -> None:
        """Choose the job's definition and where its key travels (`job_key_delivery`). Blocking."""
        settings, request = self.settings, watched.request
        if settings.job_key_delivery == "secrets-manager" and not settings.execution_role_arn:
            raise LaunchError("job_key_delivery secrets-manager needs the pool's execution_role_arn: the role "
                              "Batch reads the job's secret with")
        if settings.job_key_delivery != "environment" and settings.execution_role_arn:
            arn = ""
            try:
                arn = store_key(self._clients().secrets, request.job_id, request.job_private_key.get_secret_value(),
                                settings.tags)
                watched.definition = self._job_definitions().register_for_job(
                    request.job_id, request.app_image, [{"name": KEY_VARIABLE, "valueFrom": arn}],
                    settings.execution_role_arn)
                return
            except (ClientError, BotoCoreError) as error:
                if arn:
                    self._remove_job_key(request.job_id, "")
                if settings.job_key_delivery == "secrets-manager":
                    raise LaunchError(f"AWS Secrets Manager cannot keep the job key: {one_line(error)}") from None
                watched.notices.append(f"{IN_OVERRIDES}: Secrets Manager refused it ({one_line(error)})")
        elif settings.job_key_delivery == "auto":
            watched.notices.append(f"{IN_OVERRIDES}; set the pool's execution_role_arn to keep it in Secrets Manager")
        watched.definition = self._job_definitions().arn_for(request.app_name, request.app_image)

    def _forget_key(self, watched: _Watched) -> None:
        """Where the job's key is a secret: delete it and the job's own definition. Blocking."""
        if watched.request is not None and is_of_one_job(watched.definition):
            self._remove_job_key(watched.request.job_id, watched.definition)

    def _remove_job_key(self, job_id: str, definition: str) -> None:
        """Delete the job's secret and, if named, its own definition. A failure is logged: the secret, tagged
        with the job id, is then left in the account."""
        try:
            remove_key(self._clients().secrets, job_id)
            if definition:
                self._job_definitions().deregister(definition)
        except (ClientError, BotoCoreError) as error:
            logger.warning("AWS Batch: cannot remove the secret %s of job %s or its job definition: %s",
                           secret_name(job_id), job_id, one_line(error))

    def _queue(self, request: LaunchRequest) -> str:
        return self.settings.gpu_job_queue if request.num_gpus > 0 else self.settings.cpu_job_queue

    async def run_again(self, infrastructure_id: str) -> None:
        """A new Batch job of the same request in place of the one whose host went away."""
        watched = self._watched.get(infrastructure_id)
        if watched is None or watched.request is None:
            raise LaunchError("the worker no longer holds the job's request to submit it again")
        response = await self._call("submit_job", self._batch().submit_job, **self._submit_request(
            watched, len(watched.batch_ids)))
        watched.batch_ids.append(response["jobId"])
        watched.log_stream, watched.log_token, watched.ended = None, None, False

    def _job_definitions(self) -> JobDefinitions:
        if self._definitions is None:
            settings = self.settings
            self._definitions = JobDefinitions(self._batch(), settings.job_definition_name, settings.job_role_arn,
                                               settings.extra_container_properties, settings.tags)
        return self._definitions

    def _submit_request(self, watched: _Watched, attempt: int) -> dict:
        """Attempt 0 is the job's first start; a later one forces its status updates (it told the central it ran)."""
        settings, request = self.settings, watched.request
        env = dict(container_environment(request), DENDRO_FORCE_STATUS_UPDATES="1" if attempt > 0 else "0")
        if not is_of_one_job(watched.definition):
            env[KEY_VARIABLE] = request.job_private_key.get_secret_value()
        if request.num_gpus > 0:
            env.update(NVIDIA_DRIVER_CAPABILITIES="all")
        resources = [
            {"type": "VCPU", "value": str(max(request.num_cpus, 1))},
            {"type": "MEMORY", "value": str(max(int(request.memory_gb * 1024 * settings.memory_fraction), 128))},
        ]
        if request.num_gpus > 0:
            resources.append({"type": "GPU", "value": str(request.num_gpus)})
        submission: dict = {
            "jobName": job_name(request.job_id),
            "jobQueue": watched.queue,
            "jobDefinition": watched.definition,
            "containerOverrides": {
                "command": wrapped(WORKING_DIR_WRAPPER, request.app_argv),
                "environment": [{"name": k, "value": v} for k, v in env.items()],
                "resourceRequirements": resources,
            },
            "tags": {"dendro-job-id": request.job_id, **settings.tags},
        }
        if request.time_limit_sec:
            submission["timeout"] = {"attemptDurationSeconds": max(60, int(settings.infrastructure_time_limit(
                request.time_limit_sec)))}
        return submission

    async def attach(self, infrastructure_id: str, request: LaunchRequest) -> None:
        """Watch a job an earlier worker submitted: its later attempts are the Batch jobs of its name
        submitted after the first (`run_again` names them alike)."""
        queue, first = self._queue(request), infrastructure_id.split(":", 1)[1]
        listed = await self._call("list_jobs", self._batch().list_jobs, jobQueue=queue, filters=[
            {"name": "JOB_NAME", "values": [job_name(request.job_id)]}])
        jobs = sorted(listed.get("jobSummaryList", []), key=lambda job: job.get("createdAt", 0))
        ids = [job["jobId"] for job in jobs]
        self._watched[infrastructure_id] = _Watched(queue=queue, batch_ids=ids[ids.index(first):] if first in ids
                                                    else [first], request=request)

    # --- watch ---------------------------------------------------------------------------------------------------

    async def states(self, infrastructure_ids: list[str]) -> dict[str, InfrastructureState]:
        by_batch_id = {self._current(i): i for i in infrastructure_ids}
        ids = list(by_batch_id)
        described: dict[str, dict] = {}
        for start in range(0, len(ids), DESCRIBE_PAGE):
            page = await self._call("describe_jobs", self._batch().describe_jobs, jobs=ids[start:start + DESCRIBE_PAGE])
            described.update({job["jobId"]: job for job in page.get("jobs", [])})
        states = {}
        for batch_id, infrastructure_id in by_batch_id.items():
            job = described.get(batch_id)
            watched = self._watched.setdefault(infrastructure_id, _Watched())
            if job is None:
                watched.ended = True
                states[infrastructure_id] = InfrastructureState("gone", reason="AWS Batch no longer knows the job")
                continue
            watched.queue = job.get("jobQueue", watched.queue)
            watched.definition = watched.definition or job.get("jobDefinition", "")
            watched.log_stream = (job.get("container") or {}).get("logStreamName") or watched.log_stream
            status = job.get("status", "")
            watched.described = job
            watched.waiting_since = _waiting_since(job, watched.waiting_since) if status == "RUNNABLE" else None
            if status in UNFINISHED_BATCH_STATUSES:
                states[infrastructure_id] = InfrastructureState("running")
            elif status == "FAILED" and fnmatch.fnmatch(job.get("statusReason") or "", HOST_FAILURE):
                states[infrastructure_id] = InfrastructureState("lost", None, f"AWS Batch: {job['statusReason']}",
                                                                attempt=len(watched.batch_ids) or 1)
            else:
                watched.ended = True
                states[infrastructure_id] = _ended_state(job, len(watched.batch_ids))
        return states

    def _current(self, infrastructure_id: str) -> str:
        watched = self._watched.get(infrastructure_id)
        return watched.batch_ids[-1] if watched and watched.batch_ids else infrastructure_id.split(":", 1)[1]

    async def _why_runnable(self, watched: _Watched) -> list[str]:
        """A job RUNNABLE `runnable_warning_sec` after it was submitted gets one log line saying why it waits."""
        waited = time.time() - watched.waiting_since if watched.waiting_since is not None else 0.0
        if watched.waiting_since is None or watched.runnable_reported or waited < self.settings.runnable_warning_sec:
            return []
        watched.runnable_reported = True
        reason = await asyncio.to_thread(why_runnable, self._batch(), watched.queue, watched.described)
        return [f"AWS Batch: the job is RUNNABLE {waited:.0f} s after it was submitted; {reason}"]

    # --- logs and kill -------------------------------------------------------------------------------------------

    async def read_logs(self, infrastructure_id: str) -> list[str]:
        """New lines of the job's log stream: every `log_interval_sec` while it runs, all of them once
        it ended (CloudWatch allows a few reads per second per account)."""
        watched = self._watched.get(infrastructure_id)
        if watched is None:
            return []
        lines, watched.notices = watched.notices + await self._why_runnable(watched), []
        now = time.monotonic()
        if watched.log_stream and (watched.ended or now - watched.logs_read_at >= self._log_interval_sec):
            watched.logs_read_at = now
            try:
                lines += await asyncio.to_thread(self._new_log_lines, watched)
            except (ClientError, BotoCoreError) as error:
                if "ResourceNotFoundException" not in str(error):  # the stream appears with the first line
                    lines.append(f"AWS Batch: cannot read the job's log stream: {one_line(error)}")
        return lines

    def _new_log_lines(self, watched: _Watched) -> list[str]:
        lines: list[str] = []
        while True:
            request: dict = {"logGroupName": LOG_GROUP, "logStreamName": watched.log_stream, "startFromHead": True}
            if watched.log_token:
                request["nextToken"] = watched.log_token
            page = self._logs().get_log_events(**request)
            lines += [event["message"].rstrip("\n") for event in page.get("events", [])]
            token = page.get("nextForwardToken")
            if not page.get("events") or token == watched.log_token:
                watched.log_token = token or watched.log_token
                return lines
            watched.log_token = token

    async def ended_output(self, infrastructure_id: str, job_id: str) -> list[str]:
        """The whole log stream of the job's (current) Batch job."""
        page = await self._call("describe_jobs", self._batch().describe_jobs, jobs=[self._current(infrastructure_id)])
        jobs = page.get("jobs", [])
        stream = (jobs[0].get("container") or {}).get("logStreamName") if jobs else None
        if not stream:
            return []
        return await self._call("get_log_events", self._new_log_lines, _Watched(log_stream=stream))

    async def kill(self, infrastructure_id: str) -> None:
        await self._call("terminate_job", self._batch().terminate_job, jobId=self._current(infrastructure_id),
                         reason="Stopped by dendro-prefect: the job was cancelled, failed or deleted")

    async def release(self, infrastructure_id: str) -> None:
        watched = self._watched.pop(infrastructure_id, None)
        if watched is not None:
            await asyncio.to_thread(self._forget_key, watched)


def _waiting_since(job: dict, seen_since: float | None) -> float:
    """Since when a RUNNABLE job waits: its Batch job's creation (`createdAt`, ms, AWS's clock) or, if earlier,
    our first sight of it RUNNABLE. From the creation, one observation in RUNNABLE tells how long it waits,
    where the time between two polls may be longer than its stay in RUNNABLE."""
    since = seen_since if seen_since is not None else time.time()
    created_ms = job.get("createdAt")
    return min(since, created_ms / 1000) if isinstance(created_ms, (int, float)) else since


def _ended_state(job: dict, attempts: int) -> InfrastructureState:
    if job.get("status") == "SUCCEEDED":
        return InfrastructureState("exited", 0)
    container = job.get("container") or (job.get("attempts") or [{}])[-1].get("container") or {}
    exit_code = container.get("exitCode")
    reasons = [r for r in (job.get("statusReason"), container.get("reason")) if r]
    detail = "AWS Batch status FAILED" + (f": {'; '.join(reasons)}" if reasons else "")
    if attempts > 1:
        detail += f" (attempt {attempts})"
    return InfrastructureState("exited", exit_code, detail)
