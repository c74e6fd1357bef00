"""The Kubernetes launcher against a fake API (`FakeKubernetes`) and watch caches the test fills (`StaticWatch`):
the Job and its Secret, the translation of Job conditions and pod statuses into our states (pending reasons,
image and configuration errors, evictions, OOM, deadline), logs, restarts on another cluster, and clean-up."""

from __future__ import annotations

import base64

import pytest
from kubernetes.client.rest import ApiException
from kubernetes.config import kube_config

from dendro_prefect.workers.kubernetes import KubernetesJobConfiguration, KubernetesWorker
from dendro_prefect.workers.kubernetes import launcher as k8s_launcher
from dendro_prefect.workers.kubernetes.cluster import ClusterAccess
from dendro_prefect.workers.kubernetes.launcher import (
    CONFIG_ERRORS,
    IMAGE_ERRORS,
    KubernetesLauncher,
)
from dendro_prefect.workers.kubernetes.settings import KubernetesLauncherSettings
from dendro_prefect.workers.launch import InfrastructureState, LaunchError
from tests.unit.fakes import JOB_KEY, FakeKubernetes, k8s_job, k8s_pod, launch_request, pod_event

pytestmark = pytest.mark.anyio

NAME = "dendro-p1-abcdefgh"
INFRASTRUCTURE_ID = f"kubernetes:c0ffee:default:{NAME}"


class Access:
    def api_client(self):
        return object()


@pytest.fixture
def cluster(monkeypatch) -> FakeKubernetes:
    fake = FakeKubernetes()
    monkeypatch.setattr(k8s_launcher.client, "BatchV1Api", fake.batch_api)
    monkeypatch.setattr(k8s_launcher.client, "CoreV1Api", fake.core_api)
    monkeypatch.setattr(k8s_launcher, "cluster_identity", lambda api: "c0ffee")
    monkeypatch.setattr(k8s_launcher, "NamespaceWatch", lambda api, namespace: fake.watch)
    return fake


def launcher(**settings) -> KubernetesLauncher:
    settings.setdefault("job_manifest", {"metadata": {"namespace": "default"}})
    return KubernetesLauncher(KubernetesLauncherSettings(**settings), access=Access())


async def submitted(tmp_path, **settings) -> KubernetesLauncher:
    kubernetes = launcher(**settings)
    assert await kubernetes.submit(launch_request(tmp_path)) == INFRASTRUCTURE_ID
    return kubernetes


async def state_of(kubernetes: KubernetesLauncher, infrastructure_id: str = INFRASTRUCTURE_ID) -> InfrastructureState:
    return (await kubernetes.states([infrastructure_id]))[infrastructure_id]


async def test_a_job_is_created_with_its_key_in_a_secret_the_job_owns(tmp_path, cluster):
    await submitted(tmp_path)
    assert list(cluster.jobs) == [NAME] and JOB_KEY not in str(cluster.jobs[NAME])
    secret = cluster.secrets[f"{NAME}-key"]
    assert base64.b64decode(secret["data"]["JOB_PRIVATE_KEY"]).decode() == JOB_KEY
    assert secret["metadata"]["ownerReferences"] == [{"apiVersion": "batch/v1", "kind": "Job", "name": NAME,
                                                      "uid": f"uid-{NAME}", "blockOwnerDeletion": True}]


async def test_a_refused_job_fails_the_launch_with_kubernetes_reason(tmp_path, cluster):
    cluster.refuse_job = ApiException(status=403, reason="Forbidden")
    cluster.refuse_job.body = 'jobs.batch is forbidden:\n exceeded quota "compute"'
    with pytest.raises(LaunchError, match='^Kubernetes refused the Job: 403 Forbidden jobs.batch is forbidden: '
                                          'exceeded quota "compute"$'):
        await submitted(tmp_path)
    assert cluster.secrets == {}


async def test_a_refused_secret_removes_the_job_it_was_for(tmp_path, cluster):
    cluster.refuse_secret = ApiException(status=409, reason="Conflict")
    with pytest.raises(LaunchError, match="Kubernetes creating the job's Secret failed: 409 Conflict"):
        await submitted(tmp_path)
    assert cluster.jobs == {} and cluster.deleted_jobs == [(NAME, "Foreground")]


async def test_an_app_without_image_is_refused_before_anything_is_created(tmp_path, cluster):
    with pytest.raises(LaunchError, match="has no appImage to run on Kubernetes"):
        await launcher().submit(launch_request(tmp_path, app_image=None))
    assert cluster.jobs == {}


async def test_a_job_that_disappeared_is_gone_and_one_not_yet_in_the_watch_is_running(tmp_path, cluster, monkeypatch):
    kubernetes = await submitted(tmp_path)
    assert await state_of(kubernetes) == InfrastructureState("running")  # created a moment ago: not seen yet
    cluster.watch.put(k8s_job(NAME))
    assert await state_of(kubernetes) == InfrastructureState("running")
    cluster.watch.delete(k8s_job(NAME))
    assert await state_of(kubernetes) == InfrastructureState("gone", reason=f"Job default/{NAME} no longer exists")
    later = await submitted(tmp_path)  # never seen, for longer than the watch takes to show a new Job
    monkeypatch.setattr(k8s_launcher, "UNSEEN_LIMIT_SEC", 0.0)
    assert (await state_of(later)).phase == "gone"


async def test_a_job_this_worker_does_not_know_is_gone(tmp_path, cluster):
    assert (await state_of(launcher(), "kubernetes:c0ffee:default:other")).phase == "gone"


@pytest.mark.parametrize("pod", [None, k8s_pod(NAME, "Pending"), k8s_pod(NAME, "Running")],
                         ids=["no pod yet", "pod pending", "pod running"])
async def test_a_job_without_a_final_condition_is_running(tmp_path, cluster, pod):
    kubernetes = await submitted(tmp_path)
    cluster.watch.put(k8s_job(NAME), *([pod] if pod else []))
    assert await state_of(kubernetes) == InfrastructureState("running")


@pytest.mark.parametrize("exit_code", [0, None])
async def test_a_complete_job_exited_with_its_containers_code_or_zero(tmp_path, cluster, exit_code):
    kubernetes = await submitted(tmp_path)
    pods = [k8s_pod(NAME, "Succeeded", exit_code=exit_code, terminated="Completed")] if exit_code is not None else []
    cluster.watch.put(k8s_job(NAME, "Complete"), *pods)
    assert await state_of(kubernetes) == InfrastructureState("exited", 0)


@pytest.mark.parametrize("job_reason, terminated, exit_code, expected", [
    ("BackoffLimitExceeded", "OOMKilled", 137, "Kubernetes: the app ran out of memory (OOMKilled) at its memory limit"),
    ("DeadlineExceeded", None, None, "Kubernetes: DeadlineExceeded, the job ran past its activeDeadlineSeconds"),
    ("BackoffLimitExceeded", "Error", 2, "Kubernetes: Job failed (BackoffLimitExceeded, container Error)"),
    (None, None, None, "Kubernetes: Job failed (no reason)"),
])
async def test_a_failed_job_names_its_cause(tmp_path, cluster, job_reason, terminated, exit_code, expected):
    kubernetes = await submitted(tmp_path)
    pods = [k8s_pod(NAME, "Failed", terminated=terminated, exit_code=exit_code)] if terminated else []
    cluster.watch.put(k8s_job(NAME, "Failed", job_reason), *pods)
    assert await state_of(kubernetes) == InfrastructureState("exited", exit_code, expected)


async def test_the_newest_pod_of_the_job_is_the_one_looked_at(tmp_path, cluster):
    kubernetes = await submitted(tmp_path)
    cluster.watch.put(k8s_job(NAME, "Failed", "BackoffLimitExceeded"),
                      k8s_pod(NAME, "Failed", terminated="OOMKilled", exit_code=137, age_sec=60, name="old"),
                      k8s_pod(NAME, "Failed", terminated="Error", exit_code=1, age_sec=1, name="new"),
                      k8s_pod("dendro-other", "Failed", terminated="Error", exit_code=9, name="other"))
    assert await state_of(kubernetes) == InfrastructureState(
        "exited", 1, "Kubernetes: Job failed (BackoffLimitExceeded, container Error)")


async def test_a_started_pods_log_reaches_the_flow_run_log(tmp_path, cluster):
    kubernetes = await submitted(tmp_path)
    pod = k8s_pod(NAME, "Succeeded", exit_code=0)
    cluster.logs[pod.metadata.name] = [b"Starting\nhalf", b"way\n", b"Job completed\n"]
    cluster.watch.put(k8s_job(NAME, "Complete"), pod)
    assert (await state_of(kubernetes)).phase == "exited"  # the log's follower is joined when the job ends
    assert await kubernetes.read_logs(INFRASTRUCTURE_ID) == ["Starting", "half", "way", "Job completed"]
    assert await kubernetes.read_logs(INFRASTRUCTURE_ID) == []


# --- Pending pods -------------------------------------------------------------------------------------------------


async def test_a_pod_pending_less_than_the_warning_is_running_and_its_events_not_read(tmp_path, cluster):
    kubernetes = await submitted(tmp_path, pending_warning_sec=600)
    cluster.watch.put(k8s_job(NAME), k8s_pod(NAME, "Pending", waiting="ErrImagePull", waiting_message="no such image"))
    cluster.events.append(pod_event(f"{NAME}-abcde", "Failed", "pull failed"))
    assert await state_of(kubernetes) == InfrastructureState("running")
    assert await kubernetes.read_logs(INFRASTRUCTURE_ID) == []


async def test_a_pod_pending_past_the_warning_gets_its_events_in_the_log_once(tmp_path, cluster):
    kubernetes = await submitted(tmp_path, pending_warning_sec=0, pending_limit_sec=600)
    cluster.watch.put(k8s_job(NAME), k8s_pod(NAME, "Pending"))
    cluster.events += [pod_event(f"{NAME}-abcde", "FailedScheduling", "0/1 nodes are available: 1 Insufficient cpu."),
                       pod_event(f"{NAME}-abcde", "Scheduled", "assigned", kind="Normal")]
    assert await state_of(kubernetes) == InfrastructureState("running")
    assert await state_of(kubernetes) == InfrastructureState("running")
    assert await kubernetes.read_logs(INFRASTRUCTURE_ID) == [
        f"Kubernetes event on pod {NAME}-abcde: FailedScheduling: 0/1 nodes are available: 1 Insufficient cpu."]


@pytest.mark.parametrize("waiting", sorted(IMAGE_ERRORS | CONFIG_ERRORS))
async def test_an_image_or_configuration_error_fails_a_pending_pod_past_the_warning(tmp_path, cluster, waiting):
    kubernetes = await submitted(tmp_path, pending_warning_sec=0, pending_limit_sec=600)
    cluster.watch.put(k8s_job(NAME), k8s_pod(NAME, "Pending", waiting=waiting, waiting_message="it\n went wrong"))
    assert await state_of(kubernetes) == InfrastructureState(
        "exited", None, f"Kubernetes: pod Pending for 0 s ({waiting}: it went wrong)")


@pytest.mark.parametrize("waiting", ["ContainerCreating", "PodInitializing"])
async def test_a_pod_still_being_created_waits_until_the_limit(tmp_path, cluster, waiting):
    kubernetes = await submitted(tmp_path, pending_warning_sec=0, pending_limit_sec=600)
    cluster.watch.put(k8s_job(NAME), k8s_pod(NAME, "Pending", waiting=waiting))
    assert await state_of(kubernetes) == InfrastructureState("running")


@pytest.mark.parametrize("events, cause", [
    ([pod_event(f"{NAME}-abcde", "FailedScheduling", "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")],
     "FailedScheduling: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu."),
    ([], "no event says why"),
])
async def test_a_pod_pending_past_the_limit_fails_with_its_last_events_reason(tmp_path, cluster, events, cause):
    kubernetes = await submitted(tmp_path, pending_warning_sec=0, pending_limit_sec=0)
    cluster.watch.put(k8s_job(NAME), k8s_pod(NAME, "Pending"))
    cluster.events += events
    assert await state_of(kubernetes) == InfrastructureState("exited", None,
                                                             f"Kubernetes: pod Pending for 0 s ({cause})")


# --- evictions ----------------------------------------------------------------------------------------------------


def evicted(job_name: str):
    return k8s_pod(job_name, "Failed", reason="Evicted", message="The node was low on resource: memory.")


EVICTED = f"Kubernetes: pod {NAME}-abcde evicted (The node was low on resource: memory.)"


async def test_an_evicted_pod_is_read_as_lost_and_run_again_as_a_new_job_that_may_report_running_again(tmp_path,
                                                                                                        cluster):
    kubernetes = await submitted(tmp_path)
    cluster.watch.put(k8s_job(NAME), evicted(NAME))
    assert await state_of(kubernetes) == InfrastructureState("lost", None, EVICTED)
    assert cluster.deleted_jobs == []  # a read: running it again is the job's decision (JobRun)
    await kubernetes.run_again(INFRASTRUCTURE_ID)
    assert cluster.deleted_jobs == [(NAME, "Foreground")] and f"{NAME}-key" in cluster.deleted_secrets
    retry = cluster.jobs[f"{NAME}-r1"]
    assert retry["metadata"]["labels"]["dendro.org/attempt"] == "1"
    env = {e["name"]: e.get("value") for e in retry["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DENDRO_FORCE_STATUS_UPDATES"] == "1"
    assert f"{NAME}-r1-key" in cluster.secrets
    cluster.watch.put(k8s_job(f"{NAME}-r1"), k8s_pod(f"{NAME}-r1", "Running"))
    assert await state_of(kubernetes) == InfrastructureState("running")  # the new attempt is the one watched
    cluster.watch.put(k8s_job(f"{NAME}-r1"), evicted(f"{NAME}-r1"))
    assert await state_of(kubernetes) == InfrastructureState(
        "lost", None, EVICTED.replace(NAME, f"{NAME}-r1"), attempt=2)


async def test_a_failed_job_whose_pod_still_looks_alive_waits_for_the_pods_watch(tmp_path, cluster, monkeypatch):
    """The Job's Failed (its backoff limit, after an eviction) can arrive before its pod's end: the pod's reason
    decides, once its watch shows it; a pod that never catches up leaves the Job's reason."""
    kubernetes = await submitted(tmp_path)
    cluster.watch.put(k8s_job(NAME, "Failed", "BackoffLimitExceeded"), k8s_pod(NAME, "Running"))
    assert await state_of(kubernetes) == InfrastructureState("running")
    cluster.watch.put(evicted(NAME))
    assert await state_of(kubernetes) == InfrastructureState("lost", None, EVICTED)
    monkeypatch.setattr(k8s_launcher, "POD_CATCH_UP_SEC", 0.0)
    cluster.watch.put(k8s_pod(NAME, "Running"))
    assert (await state_of(kubernetes)).phase == "exited"


async def test_a_new_attempt_refused_by_the_cluster_is_a_launch_error(tmp_path, cluster):
    kubernetes = await submitted(tmp_path)
    cluster.watch.put(k8s_job(NAME), evicted(NAME))
    cluster.refuse_job = ApiException(status=403, reason="Forbidden")
    with pytest.raises(LaunchError, match="Kubernetes refused the Job: 403 Forbidden"):
        await kubernetes.run_again(INFRASTRUCTURE_ID)


# --- restarts, kill and release ----------------------------------------------------------------------------------


async def test_a_restarted_worker_takes_up_the_latest_attempt_of_its_job(tmp_path, cluster):
    cluster.listed_jobs = [k8s_job(f"{NAME}-r2", attempt=2), k8s_job(NAME, attempt=0), k8s_job(f"{NAME}-r1", attempt=1)]
    kubernetes = launcher()
    await kubernetes.attach(INFRASTRUCTURE_ID, launch_request(tmp_path))
    cluster.watch.put(k8s_job(f"{NAME}-r2", "Complete"))
    assert await state_of(kubernetes) == InfrastructureState("exited", 0)
    await kubernetes.kill(INFRASTRUCTURE_ID)
    assert cluster.deleted_jobs == [(f"{NAME}-r2", "Foreground")]


async def test_a_worker_refuses_to_take_up_a_job_of_another_cluster(tmp_path, cluster):
    with pytest.raises(LaunchError, match=f"job {NAME} runs on cluster 0ther, this worker reaches cluster c0ffee"):
        await launcher().attach(f"kubernetes:0ther:default:{NAME}", launch_request(tmp_path))


async def test_kill_deletes_the_current_job_in_the_foreground_with_its_secret(tmp_path, cluster):
    kubernetes = await submitted(tmp_path)
    await kubernetes.kill(INFRASTRUCTURE_ID)
    assert cluster.deleted_jobs == [(NAME, "Foreground")] and cluster.deleted_secrets == [f"{NAME}-key"]


async def test_release_removes_every_attempts_job_and_secret(tmp_path, cluster):
    kubernetes = await submitted(tmp_path)
    cluster.watch.put(k8s_job(NAME), evicted(NAME))
    await kubernetes.run_again(INFRASTRUCTURE_ID)
    cluster.deleted_jobs.clear()
    await kubernetes.release(INFRASTRUCTURE_ID)
    assert [name for name, _ in cluster.deleted_jobs] == [NAME, f"{NAME}-r1"]
    assert cluster.secrets == {}


async def test_deleting_what_is_gone_already_is_no_error(tmp_path, cluster, monkeypatch):
    kubernetes = await submitted(tmp_path)
    asked = []

    def gone(_api, name, *args, **kwargs):
        asked.append(name)
        raise ApiException(status=404, reason="Not Found")

    monkeypatch.setattr(FakeKubernetes._Batch, "delete_namespaced_job", gone)
    monkeypatch.setattr(FakeKubernetes._Core, "delete_namespaced_secret", gone)
    await kubernetes.kill(INFRASTRUCTURE_ID)
    await kubernetes.release(INFRASTRUCTURE_ID)
    assert asked == [NAME, f"{NAME}-key"] * 2


async def test_a_failed_deletion_is_reported(tmp_path, cluster, monkeypatch):
    kubernetes = await submitted(tmp_path)

    def forbidden(*args, **kwargs):
        raise ApiException(status=403, reason="Forbidden")

    monkeypatch.setattr(FakeKubernetes._Batch, "delete_namespaced_job", forbidden)
    with pytest.raises(LaunchError, match="Kubernetes deleting the Job failed: 403 Forbidden"):
        await kubernetes.kill(INFRASTRUCTURE_ID)


# --- the worker's part -------------------------------------------------------------------------------------------


def test_the_worker_reuses_one_launcher_per_cluster_and_settings():
    worker = KubernetesWorker(work_pool_name="k8s-unit")
    configuration = KubernetesJobConfiguration(kubeconfig_path="/k/config", app_image="app:1")
    assert worker.launcher(configuration) is worker.launcher(configuration.model_copy())
    assert worker.launcher(configuration.model_copy(update={"context": "other"})) is not worker.launcher(configuration)
    assert worker.launcher(configuration.model_copy(update={"max_infrastructure_retries": 0})).settings \
        .max_infrastructure_retries == 0


@pytest.mark.parametrize("time_limit_sec, expected", [(None, None), (600.0, 660.0)])
def test_the_worker_gives_kubernetes_the_deadline_margin_before_it_kills_a_job_itself(time_limit_sec, expected):
    configuration = KubernetesJobConfiguration(time_limit_sec=time_limit_sec, deadline_margin_sec=60.0)
    assert KubernetesWorker(work_pool_name="k8s-unit").job_time_limit(configuration) == expected


# --- cluster access ----------------------------------------------------------------------------------------------


KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- {name: lab, cluster: {server: "https://k8s.lab.invalid:6443"}}
- {name: other, cluster: {server: "https://k8s.other.invalid:6443"}}
users:
- {name: runner, user: {token: "not-a-real-token"}}
contexts:
- {name: lab, context: {cluster: lab, user: runner}}
- {name: other, context: {cluster: other, user: runner}}
current-context: lab
"""


@pytest.mark.parametrize("context, server", [("", "https://k8s.lab.invalid:6443"),
                                             ("other", "https://k8s.other.invalid:6443")])
def test_a_kubeconfig_file_and_its_context_choose_the_cluster(tmp_path, context, server):
    path = tmp_path / "config.yaml"
    path.write_text(KUBECONFIG)
    api = ClusterAccess(kubeconfig_path=str(path), context=context).api_client()
    assert api.configuration.host == server


def test_no_configuration_anywhere_fails_the_launch_saying_so(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "none"))  # no ~/.kube/config
    with pytest.raises(LaunchError, match="^no Kubernetes cluster configuration: "):
        ClusterAccess().api_client()
    with pytest.raises(LaunchError, match="^no Kubernetes cluster configuration: "):
        ClusterAccess(kubeconfig_path=str(tmp_path / "missing.yaml")).api_client()


async def test_a_job_that_ended_unwatched_is_read_from_its_latest_pods_log(cluster):
    labels = {"dendro.org/job-id": "p1.abcdefgh"}
    cluster.watch.put(k8s_pod(NAME, "Failed", name="first", labels={**labels, "dendro.org/attempt": "0"}),
                      k8s_pod(f"{NAME}-r1", "Succeeded", name="second", labels={**labels, "dendro.org/attempt": "1"}))
    cluster.logs = {"first": [b"Running job\n"], "second": [b"Running job\n", b"Job completed\n"]}
    assert await launcher().ended_output(INFRASTRUCTURE_ID, "p1.abcdefgh") == ["Running job", "Job completed"]
    assert await launcher().ended_output(INFRASTRUCTURE_ID, "p1.other") == []
