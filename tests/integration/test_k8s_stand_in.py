"""The Kubernetes API stand-in, driven by the official `kubernetes` client exactly as the Kubernetes worker will
drive it: typed reads, watches and logs through an ApiClient loaded from the stand-in's kubeconfig."""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.conftest import wait_for
from tests.k8s_stand_in import ApiServer, running_api_server

MISSING_IMAGE = "registry.invalid/dendro/missing:1.0"
IMAGE = "busybox:1.36"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> ApiServer:
    with running_api_server(tmp_path_factory.mktemp("k8s"), missing_images={MISSING_IMAGE}) as running:
        yield running
        leftovers = running.processes()
    assert not leftovers, f"processes still running at the end: {leftovers}"


@pytest.fixture(scope="module")
def api(server) -> client.ApiClient:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(server.kubeconfig), client_configuration=configuration)
    with client.ApiClient(configuration) as api_client:
        yield api_client


@pytest.fixture
def core(api) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def batch(api) -> client.BatchV1Api:
    return client.BatchV1Api(api)


@pytest.fixture
def ns(core) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def job_body(name: str, script: str, *, image: str = IMAGE, backoff_limit: int = 0, env=None, resources=None,
             deadline: int | None = None, ttl: int | None = None, volumes: dict | None = None) -> client.V1Job:
    """A Job as the worker writes one: one container running `/bin/sh -c script`, restartPolicy Never."""
    mounts = [client.V1VolumeMount(name=vol, mount_path=path) for vol, path in (volumes or {}).items()]
    container = client.V1Container(name="main", image=image, command=["/bin/sh", "-c", script], env=env,
                                   resources=client.V1ResourceRequirements(**resources) if resources else None,
                                   volume_mounts=mounts or None)
    pod_spec = client.V1PodSpec(restart_policy="Never", containers=[container],
                                volumes=[client.V1Volume(name=vol, empty_dir=client.V1EmptyDirVolumeSource())
                                         for vol in volumes or {}] or None)
    spec = client.V1JobSpec(backoff_limit=backoff_limit, active_deadline_seconds=deadline,
                            ttl_seconds_after_finished=ttl,
                            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels={"app": "dendro"}),
                                                              spec=pod_spec))
    return client.V1Job(api_version="batch/v1", kind="Job", metadata=client.V1ObjectMeta(name=name), spec=spec)


def finished(batch: client.BatchV1Api, ns: str, name: str):
    """The Job's Complete or Failed condition, once it has one."""
    conditions = batch.read_namespaced_job(name, ns).status.conditions or []
    return next((c for c in conditions if c.type in ("Complete", "Failed") and c.status == "True"), None)


def job_pods(core: client.CoreV1Api, ns: str, job: str) -> list[client.V1Pod]:
    return core.list_namespaced_pod(ns, label_selector=f"job-name={job}").items


def one_pod(core: client.CoreV1Api, ns: str, job: str, phase: str | None = None) -> client.V1Pod:
    def found():
        pods = job_pods(core, ns, job)
        return pods[0] if pods and (phase is None or pods[0].status.phase == phase) else None
    return wait_for(found, what=f"a {phase or ''} pod of job {job}")


def pod_events(core: client.CoreV1Api, ns: str, pod: str) -> list[client.CoreV1Event]:
    return core.list_namespaced_event(ns, field_selector=f"involvedObject.name={pod},involvedObject.kind=Pod").items


def pid_of(pod: client.V1Pod) -> int:
    return int(pod.status.container_statuses[0].container_id.rsplit("/", 1)[1])


def test_job_completes_with_secret_env_volume_and_logs(server, core, batch, ns):
    secret_value = "not-for-printing"
    core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name="creds"), data={
        "SECRET_VALUE": base64.b64encode(secret_value.encode()).decode()}))
    env = [client.V1EnvVar(name="SECRET_VALUE", value_from=client.V1EnvVarSource(
        secret_key_ref=client.V1SecretKeySelector(name="creds", key="SECRET_VALUE")))]
    script = ("echo hello; echo ${#SECRET_VALUE}; echo done > /scratch/marker; "
              "python3 -c 'import time; time.sleep(0.5)'; cat /scratch/marker")
    created = batch.create_namespaced_job(ns, job_body("hello", script, env=env, volumes={"scratch": "/scratch"}))
    assert created.metadata.uid and created.metadata.resource_version and created.metadata.creation_timestamp

    pod = one_pod(core, ns, "hello", "Running")
    followed = list(watch.Watch().stream(core.read_namespaced_pod_log, pod.metadata.name, ns))
    assert followed == ["hello", str(len(secret_value)), "done"]

    stream = watch.Watch()
    for event in stream.stream(batch.list_namespaced_job, ns, field_selector="metadata.name=hello",
                               timeout_seconds=10):
        if any(c.type == "Complete" and c.status == "True" for c in event["object"].status.conditions or []):
            stream.stop()
    job = batch.read_namespaced_job("hello", ns)
    assert job.status.succeeded == 1 and job.status.active is None
    assert job.status.start_time and job.status.completion_time

    pod = core.read_namespaced_pod(pod.metadata.name, ns)
    assert pod.status.phase == "Succeeded"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    labels = pod.metadata.labels
    assert labels["job-name"] == labels["batch.kubernetes.io/job-name"] == "hello" and labels["app"] == "dendro"
    assert labels["controller-uid"] == labels["batch.kubernetes.io/controller-uid"] == job.metadata.uid
    assert pod.metadata.owner_references[0].uid == job.metadata.uid and pod.metadata.owner_references[0].controller

    logs = core.read_namespaced_pod_log(pod.metadata.name, ns)
    assert logs == f"hello\n{len(secret_value)}\ndone\n" and secret_value not in logs
    assert core.read_namespaced_pod_log(pod.metadata.name, ns, tail_lines=1) == "done\n"
    stamped = core.read_namespaced_pod_log(pod.metadata.name, ns, timestamps=True).splitlines()
    assert len(stamped) == 3 and stamped[0].endswith("Z hello")
    reasons = [e.reason for e in pod_events(core, ns, pod.metadata.name)]
    assert {"Scheduled", "Pulled", "Created", "Started"} <= set(reasons)
    job_events = core.list_namespaced_event(ns, field_selector="involvedObject.kind=Job").items
    assert {"SuccessfulCreate", "Completed"} <= {e.reason for e in job_events}
    everywhere = client.CoreV1Api(core.api_client).list_pod_for_all_namespaces(label_selector="job-name=hello")
    assert pod.metadata.name in [p.metadata.name for p in everywhere.items]


def test_failing_command_fails_the_job_with_backoff_limit_exceeded(core, batch, ns):
    batch.create_namespaced_job(ns, job_body("fails", "echo broken >&2; exit 3"))
    failed = wait_for(lambda: finished(batch, ns, "fails"), what="job end")
    assert (failed.type, failed.reason) == ("Failed", "BackoffLimitExceeded")
    job = batch.read_namespaced_job("fails", ns)
    assert job.status.failed == 1 and job.status.completion_time is None
    pod = one_pod(core, ns, "fails")
    terminated = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, terminated.exit_code, terminated.reason) == ("Failed", 3, "Error")
    assert core.read_namespaced_pod_log(pod.metadata.name, ns) == "broken\n"
    assert "BackoffLimitExceeded" in {e.reason for e in core.list_namespaced_event(
        ns, field_selector="involvedObject.name=fails").items}


def test_failed_pod_is_replaced_while_backoff_limit_allows(core, batch, ns):
    batch.create_namespaced_job(ns, job_body("retries", "exit 1", backoff_limit=1))
    failed = wait_for(lambda: finished(batch, ns, "retries"), what="job end")
    assert failed.reason == "BackoffLimitExceeded"
    assert batch.read_namespaced_job("retries", ns).status.failed == 2
    assert len(job_pods(core, ns, "retries")) == 2


def test_memory_hog_is_oom_killed(core, batch, ns):
    script = 'python3 -c "b = bytearray(300*1024*1024); import time; time.sleep(30)"'
    limits = {"limits": {"memory": "100Mi"}, "requests": {"memory": "100Mi"}}
    batch.create_namespaced_job(ns, job_body("hog", script, resources=limits))
    failed = wait_for(lambda: finished(batch, ns, "hog"), timeout=15, what="job end")
    assert failed.reason == "BackoffLimitExceeded"
    terminated = one_pod(core, ns, "hog").status.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("OOMKilled", 137)


def test_active_deadline_kills_the_process(server, core, batch, ns):
    batch.create_namespaced_job(ns, job_body("slow", "sleep 30", deadline=1))
    pid = pid_of(one_pod(core, ns, "slow", "Running"))
    failed = wait_for(lambda: finished(batch, ns, "slow"), what="job end")
    assert (failed.type, failed.reason) == ("Failed", "DeadlineExceeded")
    assert pid not in server.processes()
    assert "DeadlineExceeded" in {e.reason for e in core.list_namespaced_event(
        ns, field_selector="involvedObject.kind=Job").items}


def test_requests_beyond_the_node_stay_pending_with_failed_scheduling(core, batch, ns):
    batch.create_namespaced_job(ns, job_body("gpu", "true", resources={"limits": {"nvidia.com/gpu": "1"}}))
    batch.create_namespaced_job(ns, job_body("big", "true", resources={"requests": {"cpu": "64"}}))
    for job, message in (("gpu", "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."),
                         ("big", "0/1 nodes are available: 1 Insufficient cpu.")):
        pod = one_pod(core, ns, job)
        events = watch.Watch().stream(core.list_namespaced_event, ns, timeout_seconds=5,
                                      field_selector=f"involvedObject.name={pod.metadata.name},reason=FailedScheduling")
        assert next(events)["object"].message == message
        pod = core.read_namespaced_pod(pod.metadata.name, ns)
        assert pod.status.phase == "Pending" and not pod.spec.node_name
        scheduled = next(c for c in pod.status.conditions if c.type == "PodScheduled")
        assert (scheduled.status, scheduled.reason) == ("False", "Unschedulable")
        with pytest.raises(ApiException) as error:
            core.read_namespaced_pod_log(pod.metadata.name, ns)
        assert error.value.status == 400 and "is waiting to start" in json.loads(error.value.body)["message"]


def test_missing_image_backs_off_with_events(core, batch, ns):
    batch.create_namespaced_job(ns, job_body("noimage", "true", image=MISSING_IMAGE))
    pod = one_pod(core, ns, "noimage")

    def waiting_reason():
        statuses = core.read_namespaced_pod(pod.metadata.name, ns).status.container_statuses or []
        waiting = statuses[0].state.waiting if statuses else None
        return waiting.reason if waiting and waiting.reason == "ImagePullBackOff" else None

    wait_for(waiting_reason, what="ImagePullBackOff")
    messages = [e.message for e in pod_events(core, ns, pod.metadata.name)]
    assert any(m.startswith(f'Failed to pull image "{MISSING_IMAGE}"') for m in messages)
    assert core.read_namespaced_pod(pod.metadata.name, ns).status.phase == "Pending"
    with pytest.raises(ApiException) as error:
        core.read_namespaced_pod_log(pod.metadata.name, ns)
    assert error.value.status == 400


def test_missing_secret_holds_the_pod_until_it_exists(core, batch, ns):
    env = [client.V1EnvVar(name="TOKEN", value_from=client.V1EnvVarSource(
        secret_key_ref=client.V1SecretKeySelector(name="later", key="token")))]
    batch.create_namespaced_job(ns, job_body("later", 'test "$TOKEN" = t0k3n', env=env))
    pod = one_pod(core, ns, "later")

    def config_error():
        statuses = core.read_namespaced_pod(pod.metadata.name, ns).status.container_statuses or []
        waiting = statuses[0].state.waiting if statuses else None
        return waiting and waiting.reason == "CreateContainerConfigError"

    wait_for(config_error, what="CreateContainerConfigError")
    assert 'Error: secret "later" not found' in [e.message for e in pod_events(core, ns, pod.metadata.name)]
    core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name="later"),
                                                      string_data={"token": "t0k3n"}))
    assert wait_for(lambda: finished(batch, ns, "later"), what="job end").type == "Complete"


def test_foreground_delete_removes_job_pods_secret_and_process(server, core, batch, ns):
    job = batch.create_namespaced_job(ns, job_body("doomed", "sleep 60"))
    owner = client.V1OwnerReference(api_version="batch/v1", kind="Job", name="doomed", uid=job.metadata.uid)
    core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(
        name="doomed-secret", owner_references=[owner]), string_data={"k": "v"}))
    pid = pid_of(one_pod(core, ns, "doomed", "Running"))
    assert pid in server.processes()

    started = time.monotonic()
    answer = batch.delete_namespaced_job("doomed", ns, body=client.V1DeleteOptions(propagation_policy="Foreground"))
    assert answer["metadata"]["deletionTimestamp"] and "foregroundDeletion" in answer["metadata"]["finalizers"]
    wait_for(lambda: not (server.jobs(ns) or server.pods(ns) or server.secrets(ns)), timeout=2, what="cleanup")
    assert pid not in server.processes()
    assert time.monotonic() - started < 2
    with pytest.raises(ApiException) as error:
        batch.read_namespaced_job("doomed", ns)
    assert error.value.status == 404


def test_background_delete_and_default_orphaning(server, core, batch, ns):
    batch.create_namespaced_job(ns, job_body("bg", "sleep 60"))
    pid = pid_of(one_pod(core, ns, "bg", "Running"))
    batch.delete_namespaced_job("bg", ns, propagation_policy="Background")
    wait_for(lambda: not (server.jobs(ns) or server.pods(ns)), timeout=3, what="background cleanup")
    assert pid not in server.processes()

    batch.create_namespaced_job(ns, job_body("orphan", "sleep 60"))
    pod = one_pod(core, ns, "orphan", "Running")
    batch.delete_namespaced_job("orphan", ns)  # batch/v1 deletes orphan the pods unless told otherwise
    wait_for(lambda: not server.jobs(ns), timeout=2, what="job removal")
    orphan = core.read_namespaced_pod(pod.metadata.name, ns)
    assert orphan.status.phase == "Running" and not orphan.metadata.owner_references
    deleted = core.delete_namespaced_pod(pod.metadata.name, ns)
    assert deleted.metadata.deletion_timestamp
    wait_for(lambda: not server.pods(ns), timeout=3, what="pod removal")
    assert pid_of(pod) not in server.processes()


def test_ttl_after_finished_deletes_the_job(server, batch, ns):
    batch.create_namespaced_job(ns, job_body("brief", "true", ttl=0))
    wait_for(lambda: not server.jobs(ns) and not server.pods(ns), what="TTL deletion")


def test_watch_resumed_after_compaction_gets_410(server, core, ns):
    old = core.list_namespaced_pod(ns).metadata.resource_version
    core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name="bump")))
    server.compact()
    with pytest.raises(ApiException) as error:
        for _ in watch.Watch().stream(core.list_namespaced_pod, ns, resource_version=old, timeout_seconds=5):
            pass
    assert error.value.status == 410
    with pytest.raises(ApiException) as error:  # and the retrying form (no timeout) gives up the same way
        for _ in watch.Watch().stream(core.list_namespaced_secret, ns, resource_version=old):
            pass
    assert error.value.status == 410


def test_evicted_pod_fails_and_its_process_dies(server, core, batch, ns):
    batch.create_namespaced_job(ns, job_body("evictee", "sleep 60"))
    pod = one_pod(core, ns, "evictee", "Running")
    server.evict(ns, pod.metadata.name)
    stream = watch.Watch()
    for event in stream.stream(core.list_namespaced_pod, ns, timeout_seconds=5,
                               field_selector=f"metadata.name={pod.metadata.name}"):
        if event["object"].status.phase == "Failed":
            stream.stop()
    evicted = core.read_namespaced_pod(pod.metadata.name, ns)
    assert (evicted.status.phase, evicted.status.reason) == ("Failed", "Evicted")
    wait_for(lambda: pid_of(pod) not in server.processes(), timeout=2, what="process death")
    assert wait_for(lambda: finished(batch, ns, "evictee"), what="job end").reason == "BackoffLimitExceeded"
    assert "Evicted" in [e.reason for e in pod_events(core, ns, pod.metadata.name)]


def test_requests_without_the_token_are_unauthorized(server):
    for headers in ({}, {"authorization": "Bearer wrong"}):
        configuration = client.Configuration(host=server.url)
        with client.ApiClient(configuration) as anonymous:
            with pytest.raises(ApiException) as error:
                client.CoreV1Api(anonymous).list_namespace(_headers=headers)
        assert error.value.status == 401
        assert json.loads(error.value.body)["reason"] == "Unauthorized"


def test_errors_are_kubernetes_status_objects(core, batch, ns):
    def status_of(call) -> dict:
        with pytest.raises(ApiException) as error:
            call()
        body = json.loads(error.value.body)
        assert body["kind"] == "Status" and body["code"] == error.value.status
        return body

    assert status_of(lambda: batch.read_namespaced_job("absent", ns))["reason"] == "NotFound"
    secret = client.V1Secret(metadata=client.V1ObjectMeta(name="twice"))
    core.create_namespaced_secret(ns, secret)
    assert status_of(lambda: core.create_namespaced_secret(ns, secret))["reason"] == "AlreadyExists"
    empty = job_body("empty", "true")
    empty.spec.template.spec.containers = []
    assert status_of(lambda: batch.create_namespaced_job(ns, empty))["code"] == 422
    always = job_body("always", "true")
    always.spec.template.spec.restart_policy = "Always"
    assert "restartPolicy" in status_of(lambda: batch.create_namespaced_job(ns, always))["message"]
    assert status_of(lambda: batch.create_namespaced_job("no-such-namespace", job_body("x", "true")))["code"] == 404


def test_discovery_and_typed_reads(server, api, core):
    assert client.VersionApi(api).get_code().git_version.startswith("v1.")
    assert client.CoreApi(api).get_api_versions().versions == ["v1"]
    assert "batch" in [g.name for g in client.ApisApi(api).get_api_versions().groups]
    assert "jobs" in [r.name for r in client.BatchV1Api(api).get_api_resources().resources]
    assert "pods/log" in [r.name for r in core.get_api_resources().resources]
    assert server.namespace_uid("kube-system") == core.read_namespace("kube-system").metadata.uid
    assert {"default", "kube-system"} <= {n.metadata.name for n in core.list_namespace().items}
    node = core.list_node().items[0]
    assert node.status.allocatable["cpu"] == "4" and node.status.allocatable["memory"] == "8Gi"
    assert Path(server.kubeconfig).read_text().count("127.0.0.1") == 1
