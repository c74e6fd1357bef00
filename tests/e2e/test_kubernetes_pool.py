"""Dendro jobs as Kubernetes Jobs, against the API-server stand-in of tests/k8s_stand_in (no Kubernetes
can run here): a real HTTP server that the official client reaches through a kubeconfig, whose Job
controller runs each pod's command as a local process, ignoring the image. The app is letter_count
with the real dendro SDK, found on the PATH the pool's `env` gives the pods."""

import base64
import json
import os
import time

import pytest
from kubernetes import client, config
from prefect_kubernetes import KubernetesClusterConfig

from dendro_prefect.workers.kubernetes.namespace_watch import ResourceCache
from tests.conftest import FIXTURES, LETTER_COUNT_APP, create_letter_count_job
from tests.k8s_stand_in import running_api_server
from tests.secrets_scan import kubernetes_objects_scanned, record_secret
from tests.stack import (
    APP_OUTLIVES_RESTART_SEC,
    IMAGE,
    cancel_running_job,
    final_flow_run,
    finished_job,
    flow_run_log,
    flow_runs_of_job,
    infrastructure_id_of,
    letter_count_spec_uri,
    restart_worker_and_finish,
    running_controller,
    wait_for,
    wait_for_log,
)
from tests.v06_service import app_spec, running_compute_client

NAMESPACE = "dendro"
MISSING_IMAGE = "registry.invalid/no-such-app:1"


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    with running_api_server(tmp_path_factory.mktemp("k8s"), gpus=0, missing_images={MISSING_IMAGE}) as server:
        record_secret(server.token, "kube-token")
        # Every Job and Pod the module makes is recorded, and checked for keys and credentials at its end.
        with kubernetes_objects_scanned(server.url, server.token):
            api = config.new_client_from_config(str(server.kubeconfig))
            client.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})
            yield server


def sleeper_spec_uri(workdir) -> str:
    spec = json.loads((FIXTURES / "apps" / "sleeper" / "spec.json").read_text())
    executable = str(FIXTURES / "apps" / "sleeper" / "sleeper.sh")
    spec.update(appImage=IMAGE, appExecutable=executable, executable=executable)
    path = workdir / "sleeper_image_spec.json"
    path.write_text(json.dumps(spec))
    return path.as_uri()


def pool_variables(api_server, sdk_bin) -> dict:
    """The pool's job variables: the cluster, and the dendro SDK of `sdk_bin` on the pods' PATH."""
    return {"kubeconfig_path": str(api_server.kubeconfig), "namespace": NAMESPACE,
            "env": {"PATH": f"{sdk_bin}{os.pathsep}{os.environ['PATH']}"}, "deadline_margin_sec": 0,
            "pending_warning_sec": 1, "pending_limit_sec": 6}


@pytest.fixture(scope="module")
def k8s_controller(prefect_stack, tmp_path_factory, sdk_bin, api_server):
    workdir = tmp_path_factory.mktemp("kubernetes")
    apps = [{"name": "letter_count",
             "specUri": letter_count_spec_uri(workdir, image=IMAGE, executable=str(LETTER_COUNT_APP / "main.py"))},
            {"name": "sleeper", "specUri": sleeper_spec_uri(workdir)}]
    with running_controller(prefect_stack, workdir, sdk_bin, apps=apps, worker_type="dendro-kubernetes",
                            run_method="kubernetes", worker_env={"PREFECT_WORKER_HEARTBEAT_SECONDS": "2"},
                            job_variables=pool_variables(api_server, sdk_bin)) as controller:
        yield controller


def k8s_job(controller, **changes) -> str:
    return create_letter_count_job(controller.admin, controller.resource_id, runMethod="kubernetes", **changes)


def job_name_of(job_id: str) -> str:
    _cluster, namespace, name = infrastructure_id_of(job_id, "kubernetes").split(":")
    assert namespace == NAMESPACE
    return name


def no_orphans(api_server, name: str) -> None:
    """Neither the Job, its pods nor its Secret is left, and no process runs."""
    wait_for(lambda: not any(o["metadata"]["name"].startswith(name) for kind in ("jobs", "secrets", "pods")
                             for o in getattr(api_server, kind)(NAMESPACE)), f"{name}'s objects to be removed")
    wait_for(lambda: not api_server.processes(), "the pods' processes to end")


def test_job_completes_and_its_key_is_only_in_its_secret(k8s_controller, api_server, prefect_stack):
    controller = k8s_controller
    job_id = k8s_job(controller, text="hello dendro world",
                     inputParameters=[{"name": "letter", "value": "o"}, {"name": "delay_sec", "value": 2}])
    name = job_name_of(job_id)
    job = wait_for(lambda: next((j for j in api_server.jobs(NAMESPACE) if j["metadata"]["name"] == name), None),
                   "the Job")
    secret = wait_for(lambda: next((s for s in api_server.secrets(NAMESPACE) if s["metadata"]["name"] == f"{name}-key"
                                    and s["metadata"].get("ownerReferences")), None), "the Job to own its Secret")
    key = base64.b64decode(secret["data"]["JOB_PRIVATE_KEY"]).decode()
    assert secret["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    assert key not in json.dumps(job)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "JOB_PRIVATE_KEY", "valueFrom": {"secretKeyRef": {"name": f"{name}-key",
                                                                      "key": "JOB_PRIVATE_KEY"}}} in container["env"]
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "1024Mi"}
    assert job["spec"]["activeDeadlineSeconds"] == 60 and job["spec"]["backoffLimit"] == 0
    labels = job["metadata"]["labels"]
    assert labels["dendro.org/job-id"] == job_id
    assert labels["prefect.io/flow-run-id"] == str(flow_runs_of_job(job_id)[0].id)

    finished = finished_job(controller.admin, job_id)
    assert finished["status"] == "completed", finished.get("error")
    assert json.loads(controller.admin.output(job_id, "output")) == {"letter": "o", "count": 3}
    flow_run = final_flow_run(job_id)
    assert flow_run.state.is_completed()
    log = wait_for_log(flow_run.id, "Job completed")
    assert key not in log
    assert key not in (prefect_stack.home / f"{controller.pool}.log").read_text(errors="replace")
    no_orphans(api_server, name)


def test_a_dendro_06_job_completes_as_a_kubernetes_job(prefect_stack, tmp_path_factory, sdk06_bin, api_server):
    """A compute client of a Dendro 0.6 service whose jobs go to a pool of this cluster: the same Job and Secret as a
    0.2 job's, with the 0.6 environment and `python <executable>`; the dendro 0.6.22 SDK on the pods' PATH."""
    with running_compute_client(prefect_stack, tmp_path_factory.mktemp("v06-kubernetes"), sdk06_bin, "lab-kubernetes",
                                app_spec(image=IMAGE), run_method="kubernetes", worker_type="dendro-kubernetes",
                                job_variables=pool_variables(api_server, sdk06_bin)) as stack:
        job_id = stack.count_characters("counted in a pod")
        name = job_name_of(job_id)
        job = stack.finished(job_id)
        assert job["status"] == "completed", job.get("error")
        assert stack.output(job) == {"num_characters": 16}
        assert final_flow_run(job_id).state.is_completed()
        no_orphans(api_server, name)


def test_failing_app_fails_the_job(k8s_controller, api_server):
    controller = k8s_controller
    job_id = k8s_job(controller, inputParameters=[{"name": "letter", "value": "xy"}])
    job = finished_job(controller.admin, job_id)
    assert job["status"] == "failed" and job["error"] == "Error running job: return code 1"
    assert final_flow_run(job_id).state.is_failed()
    no_orphans(api_server, job_name_of(job_id))


def test_app_over_its_memory_limit_fails_the_job_as_oomkilled(k8s_controller, api_server):
    """A limit of 20 MiB is below what the SDK's Python itself needs: the stand-in's kubelet kills it."""
    controller = k8s_controller
    job_id = k8s_job(controller, requiredResources={"numCpus": 1, "numGpus": 0, "memoryGb": 0.02, "timeSec": 60})
    job = finished_job(controller.admin, job_id)
    assert job["status"] == "failed"
    assert "OOMKilled" in job["error"] and "\n" not in job["error"]
    no_orphans(api_server, job_name_of(job_id))


def test_job_past_its_deadline_fails_as_deadline_exceeded(k8s_controller, api_server):
    """The sleeper app has no SDK to stop it at its time limit: activeDeadlineSeconds does."""
    controller = k8s_controller
    spec = json.loads((FIXTURES / "apps" / "sleeper" / "spec.json").read_text())["processors"][0]
    job_id = k8s_job(controller, processorName="sleeper", processorSpec=spec, inputFiles=[], outputFiles=[],
                     inputParameters=[], requiredResources={"numCpus": 1, "numGpus": 0, "memoryGb": 0.5, "timeSec": 3})
    job = finished_job(controller.admin, job_id)
    assert job["status"] == "failed" and "DeadlineExceeded" in job["error"]
    no_orphans(api_server, job_name_of(job_id))


def test_pod_pending_too_long_logs_its_events_and_fails_with_them(k8s_controller, api_server):
    controller = k8s_controller
    job_id = k8s_job(controller, requiredResources={"numCpus": 1, "numGpus": 1, "memoryGb": 1, "timeSec": 60})
    job = finished_job(controller.admin, job_id)
    assert job["status"] == "failed"
    assert job["error"].startswith("Kubernetes: pod Pending for ")
    assert "FailedScheduling: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu." in job["error"]
    flow_run = final_flow_run(job_id)
    wait_for_log(flow_run.id, "Kubernetes event on pod dendro-", "FailedScheduling: 0/1 nodes are available")
    no_orphans(api_server, job_name_of(job_id))


def test_image_that_cannot_be_pulled_fails_the_job_with_the_pull_error(prefect_stack, tmp_path, sdk_bin, api_server):
    """This pool reaches the cluster through a prefect-kubernetes KubernetesClusterConfig block."""
    KubernetesClusterConfig.from_file(api_server.kubeconfig).save("stand-in-cluster", overwrite=True)
    apps = [{"name": "letter_count", "specUri": letter_count_spec_uri(tmp_path, image=MISSING_IMAGE)}]
    with running_controller(prefect_stack, tmp_path / "missing-image", sdk_bin, apps=apps,
                            worker_type="dendro-kubernetes", run_method="kubernetes",
                            job_variables={"cluster_config_block": "stand-in-cluster", "namespace": NAMESPACE,
                                           "pending_warning_sec": 1}) as controller:
        job_id = k8s_job(controller)
        job = finished_job(controller.admin, job_id)
        assert job["status"] == "failed" and job["error"].startswith("Kubernetes: pod Pending for ")
        assert "ErrImagePull" in job["error"] or "ImagePullBackOff" in job["error"]
        no_orphans(api_server, job_name_of(job_id))


@pytest.mark.parametrize("side", ["prefect", "central"])
def test_cancel_deletes_the_job_within_5_seconds(k8s_controller, api_server, side):
    controller = k8s_controller
    job_id = k8s_job(controller, inputParameters=[{"name": "letter", "value": "o"}, {"name": "delay_sec", "value": 120}])
    name = job_name_of(job_id)
    started = cancel_running_job(controller, job_id, side)
    wait_for(lambda: not any(j["metadata"]["name"] == name for j in api_server.jobs(NAMESPACE)), "the Job deleted",
             timeout=10)
    assert time.monotonic() - started < 5
    no_orphans(api_server, name)
    assert final_flow_run(job_id).state.is_cancelled()


def test_evicted_pod_is_started_again_and_the_job_completes(k8s_controller, api_server):
    controller = k8s_controller
    job_id = k8s_job(controller, inputParameters=[{"name": "letter", "value": "o"}, {"name": "delay_sec", "value": 8}])
    name = job_name_of(job_id)
    wait_for(lambda: controller.admin.job(job_id)["status"] == "running", "the job to run")
    pod = next(p for p in api_server.pods(NAMESPACE) if p["metadata"]["labels"].get("job-name") == name)
    api_server.evict(NAMESPACE, pod["metadata"]["name"])
    job = finished_job(controller.admin, job_id, timeout=120)
    assert job["status"] == "completed", job.get("error")
    flow_run = final_flow_run(job_id)
    assert flow_run.state.is_completed()
    assert "evicted" in flow_run_log(flow_run.id) and "starting attempt 2" in flow_run_log(flow_run.id)
    no_orphans(api_server, name)


def test_watch_lists_again_after_410_gone_and_misses_nothing(api_server):
    """The cache stops following (a lost connection, say); meanwhile a Secret appears and the server
    drops its history (compact). Resuming from the old resourceVersion gets 410 Gone: the cache lists
    again and has the Secret."""
    api = config.new_client_from_config(str(api_server.kubeconfig))
    core = client.CoreV1Api(api)
    cache = ResourceCache(core.list_namespaced_secret, NAMESPACE, "secrets", watch_timeout_sec=1)
    cache.start()
    try:
        assert cache.wait_synced(10)
        cache.stop()
        before = cache.resource_version
        core.create_namespaced_secret(NAMESPACE, {
            "metadata": {"name": "after-compaction", "labels": {"app.kubernetes.io/managed-by": "dendro-prefect"}},
            "stringData": {"x": "1"}})
        api_server.compact()
        cache.start()
        wait_for(lambda: cache.get("after-compaction") is not None, "the cache to list again", timeout=15)
        assert cache.lists == 2 and int(cache.resource_version) > int(before)
    finally:
        cache.stop()
        core.delete_namespaced_secret("after-compaction", NAMESPACE)


def test_restarted_worker_takes_up_a_running_job_and_it_completes_once(k8s_controller, api_server, prefect_stack):
    """(Last in the module: the module's worker does not come back.)"""
    controller = k8s_controller
    job_id = k8s_job(controller, inputParameters=[{"name": "letter", "value": "o"}, {"name": "delay_sec", "value": APP_OUTLIVES_RESTART_SEC}])
    name = job_name_of(job_id)
    restart_worker_and_finish(controller, prefect_stack, job_id, "kubernetes")
    no_orphans(api_server, name)
