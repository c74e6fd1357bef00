"""In-memory stand-ins for the unit layer: the central, Prefect's client, a clock, and the command-line and API
ends of the backends (Slurm's CLI, the Kubernetes API, the docker engine). Each answers as its real counterpart
does for the calls our code makes, and records them; none starts a server, a thread of its own or a daemon."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable
from uuid import UUID, uuid4

import httpx
from prefect.client.schemas.objects import FlowRun, State, StateType

from dendro_prefect.controller.routing import job_tag, resource_tag
from dendro_prefect.protocol.client import CentralError
from dendro_prefect.protocol.signing import public_key_of
from dendro_prefect.workers.kubernetes.namespace_watch import NamespaceWatch
from dendro_prefect.workers.launch import InfrastructureState, Launcher, LaunchRequest
from tests.unit.test_models import job_document

JOB_KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # a job private key to look for where it must not be
RESOURCE_KEY = "1f" * 32  # a compute resource's Ed25519 seed, and its id
RESOURCE_ID = public_key_of(RESOURCE_KEY)


def launch_request(tmp_path: Path, **overrides: Any) -> LaunchRequest:
    """A launch request of the letter_count app, its job directory under `tmp_path`."""
    values: dict[str, Any] = dict(
        job_id="p1.abcdefgh", job_private_key=JOB_KEY, app_name="letter_count", app_image="ghcr.io/lab/app:1",
        app_executable="/app/main.py", env={"JOB_ID": "p1.abcdefgh", "DENDRO_URL": "https://central.example"},
        num_cpus=2, num_gpus=0, memory_gb=4.0, time_limit_sec=3600.0, job_dir=tmp_path / "job",
        flow_run_id="8f9e7c1a-0000-4000-8000-000000000001",
    )
    values.update(overrides)
    return LaunchRequest(**values)


def job(job_id: str = "p1.abcdefgh", **changes: Any) -> dict:
    """A job document as the central's `unfinished_jobs` lists it."""
    document = job_document()
    document.update(jobId=job_id, jobPrivateKey=JOB_KEY, computeResourceId=RESOURCE_ID, **changes)
    return document


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def eventually(condition: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    """Poll `condition` on the running loop until it is truthy (and return it); fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)
    return value


def http_error(status: int, headers: dict | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://prefect.invalid/api")
    response = httpx.Response(status, headers=headers or {}, request=request)
    return httpx.HTTPStatusError(f"{status}", request=request, response=response)


# --- the central -------------------------------------------------------------------------------------------------


class FakeCentral:
    """The central as `CentralClient` answers the controller: its unfinished jobs, and status changes."""

    def __init__(self, documents: list[dict] = ()) -> None:
        self.jobs = {d["jobId"]: d for d in documents}
        self.status_changes: list[tuple[str, str, str | None]] = []  # (job id, status, error)
        self.apps: list = []  # ComputeResourceApp
        self.specs: list = []  # ComputeResourceSpec, as reported
        self.fail_with: Exception | None = None
        self.status_outage = 0  # how many status changes fail as an outage would
        self.reads = 0  # calls of unfinished_jobs

    def get_unfinished_jobs(self) -> list[dict]:
        self.reads += 1
        if self.fail_with is not None:
            raise self.fail_with
        return list(self.jobs.values())

    def get_apps(self) -> list:
        if self.fail_with is not None:
            raise self.fail_with
        return list(self.apps)

    def put_spec(self, spec) -> None:
        self.specs.append(spec)

    def set_job_status(self, job_id: str, job_private_key: str, status: str, error: str | None = None,
                       **_: Any) -> None:
        if self.status_outage:
            self.status_outage -= 1
            raise CentralError(f"PUT jobs/{job_id}/status: 503", transient=True)
        assert job_private_key == self.jobs[job_id]["jobPrivateKey"], "a status change signed with another key"
        self.status_changes.append((job_id, status, error))
        if status == "failed":
            del self.jobs[job_id]

    def failures(self) -> dict[str, str | None]:
        return {job_id: error for job_id, status, error in self.status_changes if status == "failed"}


# --- Prefect -----------------------------------------------------------------------------------------------------


def state(kind: StateType, message: str | None = None, name: str | None = None) -> State:
    return State(type=kind, name=name or kind.value.title(), message=message)


def flow_run(job_id: str, kind: StateType | None, resource_id: str = RESOURCE_ID, message: str | None = None,
             name: str | None = None) -> FlowRun:
    """A job's flow run as the subscription flow creates it (parameters and tags), in a state of `kind`."""
    return FlowRun(
        id=uuid4(), flow_id=uuid4(), name=name or f"letter_count/letter_count {job_id}",
        parameters={"job_id": job_id}, tags=[job_tag(job_id), resource_tag(resource_id)],
        state=state(kind, message) if kind is not None else None,
    )


class FakePrefect:
    """The Prefect client calls of the controller: flow runs filtered by tags, state types and ids, in creation
    order (as sorted by expected start time), their state histories, deployments, idempotent bulk creation, and the
    events of their state changes, which outlive a deleted run."""

    SUPPORTED_FILTERS = {"tags": {"all_", "any_"}, "state": {"type"}, "id": {"any_"}}

    def __init__(self, runs: list[FlowRun] = ()) -> None:
        self.runs: dict[UUID, FlowRun] = {}
        self.history: dict[UUID, list[State]] = {}
        self.deployments: dict[str, UUID] = {}
        self.created: list[FlowRun] = []
        self.read_calls = 0
        self.deployment_reads = 0
        self.bulk_calls: list[int] = []  # the number of flow runs asked for in each bulk creation
        self.refused: dict[str, str] = {}  # idempotency key -> the error Prefect answers for its item
        self.event_tags: list[list[str]] = []  # the tags of each flow run's state-change events, deleted runs' too
        self.event_reads = 0
        for run in runs:
            self.add(run)

    def add(self, run: FlowRun, earlier: list[State] = ()) -> FlowRun:
        self.runs[run.id] = run
        self.history[run.id] = [*earlier, *([run.state] if run.state else [])]
        self.event_tags.append(list(run.tags))
        return run

    def delete(self, run: FlowRun) -> None:
        """As `prefect flow-run delete`: the run is gone, its events stay."""
        del self.runs[run.id], self.history[run.id]

    async def read_events(self, filter=None, limit: int = 100):
        """Prefect's `POST /events/filter` for flow-run events related to tags, as the reconciler asks."""
        self.event_reads += 1
        assert filter.event.prefix == ["prefect.flow-run."], f"{filter.event} not faked"
        wanted = {resource_id.removeprefix("prefect.tag.") for resource_id in filter.related.id}
        total = sum(bool(wanted & set(tags)) for tags in self.event_tags)
        return SimpleNamespace(total=total, events=[], next_page=None)

    def _matches(self, run: FlowRun, flow_run_filter) -> bool:
        given = flow_run_filter.model_dump(exclude_none=True) if flow_run_filter else {}
        for name, value in given.items():
            if name != "operator":
                assert set(value) - {"operator"} <= self.SUPPORTED_FILTERS.get(name, set()), f"{name} {value} not faked"
        tags = flow_run_filter.tags if flow_run_filter else None
        if tags and tags.all_ and not set(tags.all_) <= set(run.tags):
            return False
        if tags and tags.any_ and not set(tags.any_) & set(run.tags):
            return False
        states = flow_run_filter.state if flow_run_filter else None
        if states and states.type and states.type.any_ and (run.state is None or run.state.type
                                                             not in states.type.any_):
            return False
        ids = flow_run_filter.id if flow_run_filter else None
        return not (ids and ids.any_ is not None and run.id not in ids.any_)

    async def read_flow_runs(self, *, flow_run_filter=None, sort=None, limit=None, offset=0, **_: Any):
        self.read_calls += 1
        matching = [run for run in self.runs.values() if self._matches(run, flow_run_filter)]
        return matching[offset:offset + limit if limit else None]

    async def read_flow_run(self, flow_run_id: UUID) -> FlowRun:
        self.read_calls += 1
        return self.runs[flow_run_id]

    async def read_flow_run_states(self, flow_run_id: UUID) -> list[State]:
        return list(self.history[flow_run_id])

    async def set_flow_run_state(self, flow_run_id: UUID, new_state: State, force: bool = False):
        run = self.runs[flow_run_id]
        self.runs[flow_run_id] = run.model_copy(update={"state": new_state})
        self.history[flow_run_id].append(new_state)
        return SimpleNamespace(state=new_state)

    async def read_deployment_by_name(self, name: str):
        from prefect.exceptions import ObjectNotFound

        self.deployment_reads += 1
        if name not in self.deployments:
            raise ObjectNotFound(http_exc=Exception(name))
        return SimpleNamespace(id=self.deployments[name], name=name)

    async def request(self, method: str, path: str, path_params: dict | None = None, json: Any = None, **_: Any):
        """Prefect's `POST /deployments/{id}/create_flow_run/bulk` as the server answers it: a 404 for an unknown
        deployment, else one result per item in order; an idempotency key already used gives back its run as
        created; an item whose idempotency key is in `refused` fails with that error."""
        from prefect.exceptions import PrefectHTTPStatusError

        assert (method, path) == ("POST", "/deployments/{id}/create_flow_run/bulk"), f"{method} {path} not faked"
        assert len(json) <= 100, "Prefect refuses more than 100 flow runs at once"
        deployment_id = path_params["id"]
        if deployment_id not in self.deployments.values():
            raise PrefectHTTPStatusError.from_httpx_error(http_error(404))
        self.bulk_calls.append(len(json))
        return SimpleNamespace(json=lambda: {"results": [self._create(deployment_id, item) for item in json]})

    def _create(self, deployment_id: UUID, item: dict) -> dict:
        key = item.get("idempotency_key")
        if key in self.refused:
            return {"status": "FAILED", "error": self.refused[key], "flow_run_id": None}
        existing = [run for run in self.runs.values() if key is not None and run.idempotency_key == key]
        run = existing[0] if existing else self.add(FlowRun(
            id=uuid4(), flow_id=uuid4(), deployment_id=deployment_id, name=item.get("name"),
            parameters=item.get("parameters") or {}, job_variables=item.get("job_variables"),
            tags=list(item.get("tags") or []), idempotency_key=key, state=state(StateType.SCHEDULED)))
        if not existing:
            self.created.append(run)
        return {"status": "CREATED", "flow_run_id": str(run.id), "error": None}

    def state_of(self, run: FlowRun) -> State | None:
        return self.runs[run.id].state


@dataclass
class Limit:
    name: str
    limit: int
    active: bool = True
    taken: int = 0


class FakeLimits:
    """Prefect's global concurrency limits with leases, as `TagSlots` calls them."""

    def __init__(self, *limits: Limit) -> None:
        self.limits = {limit.name: limit for limit in limits}
        self.reads = 0
        self.leases: dict[UUID, list[str]] = {}
        self.renewed: list[tuple[UUID, float]] = []
        self.released: list[UUID] = []
        self.increments: list[dict] = []
        self.fail_with: Exception | None = None

    async def read_global_concurrency_limits(self, limit: int = 10, offset: int = 0):
        self.reads += 1
        return [SimpleNamespace(name=item.name, active=item.active) for item in self.limits.values()][offset:offset + limit]

    async def increment_concurrency_slots_with_lease(self, names, slots, mode, lease_duration, holder=None):
        self.increments.append(dict(names=names, slots=slots, mode=mode, lease_duration=lease_duration, holder=holder))
        if self.fail_with is not None:
            raise self.fail_with
        if any(self.limits[name].limit == 0 for name in names):
            raise http_error(422)
        if any(self.limits[name].taken + slots > self.limits[name].limit for name in names):
            raise http_error(423, {"Retry-After": "7.5"})
        for name in names:
            self.limits[name].taken += slots
        lease_id = uuid4()
        self.leases[lease_id] = list(names)
        return httpx.Response(200, json={"lease_id": str(lease_id)})

    async def renew_concurrency_lease(self, lease_id: UUID, lease_duration: float):
        self.renewed.append((lease_id, lease_duration))

    async def release_concurrency_slots_with_lease(self, lease_id: UUID):
        self.released.append(lease_id)
        for name in self.leases.pop(lease_id):
            self.limits[name].taken -= 1


# --- backends ----------------------------------------------------------------------------------------------------


class FakeLauncher(Launcher):
    """A backend whose jobs are what the test says they are; it counts how it is asked."""

    def __init__(self, states: dict[str, InfrastructureState] | None = None) -> None:
        self.current = dict(states or {})
        self.asked: list[list[str]] = []
        self.fail_with: Exception | None = None

    async def submit(self, request: LaunchRequest) -> str:
        raise NotImplementedError

    async def states(self, infrastructure_ids: list[str]) -> dict[str, InfrastructureState]:
        self.asked.append(list(infrastructure_ids))
        if self.fail_with is not None:
            raise self.fail_with
        return {i: self.current[i] for i in infrastructure_ids if i in self.current}

    async def read_logs(self, infrastructure_id: str) -> list[str]:
        return []

    async def kill(self, infrastructure_id: str) -> None:
        pass


class FakeSlurmCli:
    """`sbatch`, `squeue` and `scancel` as `slurm.launcher._slurm` runs them: submitted jobs get ids from 100 on
    and stay PENDING until the test sets their state; `squeue` answers in the launcher's `--format`."""

    def __init__(self) -> None:
        self.jobs: dict[str, tuple[str, str]] = {}  # Slurm job id -> (state, reason)
        self.steps: dict[str, list[tuple[str, str]]] = {}  # allocation -> [(step id, step name)]
        self.submitted: list[tuple[str, Path, tuple[str, ...]]] = []  # (Slurm job id, script, options)
        self.cancelled: list[str] = []
        self.calls: list[tuple[str, ...]] = []
        self.refusal: str | None = None
        self._ids = itertools.count(100)

    def set(self, slurm_job_id: str, slurm_state: str, reason: str = "None") -> None:
        self.jobs[slurm_job_id] = (slurm_state, reason)

    def forget(self, slurm_job_id: str) -> None:
        """The job left Slurm's memory (MinJobAge passed)."""
        self.jobs.pop(slurm_job_id, None)

    async def __call__(self, *args: str) -> subprocess.CompletedProcess:
        self.calls.append(args)
        command, options = args[0], args[1:]
        if command == "sbatch":
            if self.refusal:
                return subprocess.CompletedProcess(args, 1, "", self.refusal)
            slurm_job_id = str(next(self._ids))
            self.jobs[slurm_job_id] = ("PENDING", "Priority")
            self.submitted.append((slurm_job_id, Path(options[-1]), tuple(options[:-1])))
            return subprocess.CompletedProcess(args, 0, f"{slurm_job_id};cluster\n", "")
        if command == "squeue":
            wanted = next(o for o in options if o.startswith("--jobs=")).removeprefix("--jobs=").split(",")
            if "--steps" in options:
                lines = [f"{step}|{name}" for allocation in wanted for step, name in self.steps.get(allocation, [])]
            else:
                lines = [f"{i}|{s}|{r}" for i, (s, r) in self.jobs.items() if i in wanted]
            return subprocess.CompletedProcess(args, 0, "".join(line + "\n" for line in lines), "")
        if command == "scancel":
            self.cancelled += options
            return subprocess.CompletedProcess(args, 0, "", "")
        raise AssertionError(f"unexpected Slurm command {args}")


# --- Kubernetes --------------------------------------------------------------------------------------------------


class StaticCache:
    """A `ResourceCache` whose objects the test sets."""

    def __init__(self) -> None:
        self.objects: dict[str, Any] = {}

    def get(self, name: str):
        return self.objects.get(name)

    def values(self) -> list:
        return list(self.objects.values())


class StaticWatch(NamespaceWatch):
    """A namespace's Jobs and Pods as the test sets them, in place of the watch API's caches."""

    def __init__(self, *_: Any) -> None:
        self.jobs = StaticCache()
        self.pods = StaticCache()

    def start(self, timeout: float = 30.0) -> None:
        pass

    def stop(self) -> None:
        pass

    def put(self, *objects: Any) -> None:
        for item in objects:
            self._cache_of(item).objects[item.metadata.name] = item

    def delete(self, *objects: Any) -> None:
        for item in objects:
            self._cache_of(item).objects.pop(item.metadata.name, None)

    def _cache_of(self, item: Any) -> StaticCache:
        return self.pods if item.kind == "Pod" else self.jobs


@dataclass
class FakeKubernetes:
    """The Kubernetes API as the launcher calls it through `client.BatchV1Api`/`CoreV1Api`: created and deleted
    Jobs and Secrets, pod logs and events the test sets, and refusals."""

    jobs: dict[str, dict] = field(default_factory=dict)
    secrets: dict[str, dict] = field(default_factory=dict)
    deleted_jobs: list[tuple[str, str | None]] = field(default_factory=list)  # (name, propagation policy)
    deleted_secrets: list[str] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    logs: dict[str, list[bytes]] = field(default_factory=dict)
    listed_jobs: list[Any] = field(default_factory=list)  # what list_namespaced_job answers (attach)
    refuse_job: Any = None  # an ApiException
    refuse_secret: Any = None
    watch: StaticWatch = field(default_factory=StaticWatch)  # the namespace's Jobs and Pods, as the watch sees them

    def batch_api(self, _api=None) -> "FakeKubernetes._Batch":
        return FakeKubernetes._Batch(self)

    def core_api(self, _api=None) -> "FakeKubernetes._Core":
        return FakeKubernetes._Core(self)

    @dataclass
    class _Batch:
        cluster: "FakeKubernetes"

        def create_namespaced_job(self, namespace: str, body: dict):
            if self.cluster.refuse_job is not None:
                raise self.cluster.refuse_job
            self.cluster.jobs[body["metadata"]["name"]] = body
            return SimpleNamespace(metadata=SimpleNamespace(uid=f"uid-{body['metadata']['name']}"))

        def delete_namespaced_job(self, name: str, namespace: str, body=None):
            self.cluster.deleted_jobs.append((name, getattr(body, "propagation_policy", None)))
            self.cluster.jobs.pop(name, None)

        def list_namespaced_job(self, namespace: str, label_selector: str = ""):
            return SimpleNamespace(items=self.cluster.listed_jobs)

    @dataclass
    class _Core:
        cluster: "FakeKubernetes"

        def create_namespaced_secret(self, namespace: str, body: dict):
            if self.cluster.refuse_secret is not None:
                raise self.cluster.refuse_secret
            self.cluster.secrets[body["metadata"]["name"]] = body

        def delete_namespaced_secret(self, name: str, namespace: str):
            self.cluster.deleted_secrets.append(name)
            self.cluster.secrets.pop(name, None)

        def list_namespaced_event(self, namespace: str, field_selector: str = ""):
            name = field_selector.removeprefix("involvedObject.name=")
            return SimpleNamespace(items=[e for e in self.cluster.events if e.involved == name])

        def read_namespaced_pod_log(self, name: str, namespace: str, follow: bool = False, **_: Any):
            if not follow:  # the whole log, as text
                return b"".join(self.cluster.logs.get(name, [])).decode()
            return SimpleNamespace(stream=lambda: iter(self.cluster.logs.get(name, [])))

        def list_namespaced_pod(self, namespace: str, label_selector: str = ""):
            key, _, value = label_selector.partition("=")
            return SimpleNamespace(items=[p for p in self.cluster.watch.pods.values()
                                          if (p.metadata.labels or {}).get(key) == value])


def pod_event(pod_name: str, reason: str, message: str, kind: str = "Warning"):
    return SimpleNamespace(involved=pod_name, type=kind, reason=reason, message=message)


def k8s_job(name: str, condition: str | None = None, reason: str | None = None, attempt: int = 0):
    from kubernetes.client import V1Job, V1JobCondition, V1JobStatus, V1ObjectMeta

    conditions = [V1JobCondition(type=condition, status="True", reason=reason)] if condition else None
    return V1Job(kind="Job", metadata=V1ObjectMeta(name=name, labels={"dendro.org/attempt": str(attempt)}),
                 status=V1JobStatus(conditions=conditions))


def k8s_pod(job_name: str, phase: str, *, waiting: str | None = None, waiting_message: str | None = None,
            terminated: str | None = None, exit_code: int | None = None, reason: str | None = None,
            message: str | None = None, age_sec: float = 0.0, name: str | None = None, labels: dict | None = None):
    from kubernetes.client import (
        V1ContainerState,
        V1ContainerStateTerminated,
        V1ContainerStateWaiting,
        V1ContainerStatus,
        V1ObjectMeta,
        V1Pod,
        V1PodStatus,
    )

    container_state = None
    if waiting is not None:
        container_state = V1ContainerState(waiting=V1ContainerStateWaiting(reason=waiting, message=waiting_message))
    elif exit_code is not None or terminated is not None:
        container_state = V1ContainerState(terminated=V1ContainerStateTerminated(exit_code=exit_code or 0,
                                                                                 reason=terminated))
    statuses = [V1ContainerStatus(name="app", image="app:1", image_id="", ready=False, restart_count=0,
                                  state=container_state)] if container_state else None
    created = datetime(2024, 1, 1, tzinfo=timezone.utc) - timedelta(seconds=age_sec)
    return V1Pod(kind="Pod", metadata=V1ObjectMeta(name=name or f"{job_name}-abcde", labels={"job-name": job_name, **(labels or {})},
                                       creation_timestamp=created),
                 status=V1PodStatus(phase=phase, reason=reason, message=message, container_statuses=statuses))
