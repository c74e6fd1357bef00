"""The Job and Secret of a Dendro job on Kubernetes: the pool's Job template as Prefect fills it from the pool's
variables, then the job's name, labels, container, resources and deadline; the key in the Secret only."""

from __future__ import annotations

import asyncio
import base64
import copy
import json

import pytest

from dendro_prefect.workers.kubernetes import KubernetesJobConfiguration, KubernetesWorker
from dendro_prefect.workers.kubernetes.manifest import (
    ATTEMPT_LABEL,
    FLOW_RUN_LABEL,
    JOB_ID_LABEL,
    job_labels,
    job_name,
    job_secret,
    render_job,
)
from dendro_prefect.workers.kubernetes.settings import KubernetesJobSettings
from tests.unit.fakes import JOB_KEY, launch_request

pytestmark = pytest.mark.anyio


class NoServer:
    """A Prefect client that must not be used: filling the template needs no server."""

    def __getattr__(self, name):
        raise AssertionError(f"Prefect API called: {name}")


async def pool_manifest(**values) -> dict:
    """The Job manifest as Prefect fills the pool's base job template with these variables."""
    template = KubernetesWorker.get_default_base_job_template()
    configuration = await KubernetesJobConfiguration.from_template_and_values(template, values, client=NoServer())
    return configuration.job_manifest


# The pool's Job template as Prefect fills it with the variables' defaults, as every job receives it.
POOL_DEFAULT = asyncio.run(pool_manifest())


def render(tmp_path, template: dict | None = None, attempt: int = 0, margin: float = 60.0, **changes) -> dict:
    request = launch_request(tmp_path, **changes)
    deadline = KubernetesJobSettings(deadline_margin_sec=margin).infrastructure_time_limit(request.time_limit_sec)
    return render_job(template or POOL_DEFAULT, request, attempt, deadline)


def app_container(manifest: dict) -> dict:
    return manifest["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("job_id, attempt, expected", [
    ("p1.abcdefgh", 0, "dendro-p1-abcdefgh"),
    ("P1.ABC_def", 0, "dendro-p1-abc-def"),
    ("p1.abcdefgh", 2, "dendro-p1-abcdefgh-r2"),
    ("x" * 80, 0, "dendro-" + "x" * 40),  # room for the pod's suffix within 63 characters
])
def test_job_names_are_dns_labels_from_the_job_id_and_attempt(job_id, attempt, expected):
    assert job_name(job_id, attempt) == expected


async def test_the_pools_variables_fill_the_job_template(tmp_path):
    template = await pool_manifest(
        namespace="lab", service_account_name="runner", node_selector={"gpu": "a100"},
        tolerations=[{"key": "gpu", "operator": "Exists"}], image_pull_secrets=[{"name": "regcred"}],
        extra_volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        extra_volume_mounts=[{"name": "data", "mountPath": "/data"}], labels={"team": "ephys"},
        ttl_seconds_after_finished=120)
    manifest = render(tmp_path, template)
    pod = manifest["spec"]["template"]["spec"]
    assert manifest["metadata"]["namespace"] == "lab"
    assert manifest["metadata"]["labels"]["team"] == "ephys" == manifest["spec"]["template"]["metadata"]["labels"][
        "team"]
    assert manifest["spec"]["ttlSecondsAfterFinished"] == 120
    assert pod["serviceAccountName"] == "runner" and pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                              {"name": "dendro-tmp", "emptyDir": {}}]
    assert app_container(manifest)["volumeMounts"] == [{"name": "data", "mountPath": "/data"},
                                                       {"name": "dendro-tmp", "mountPath": "/tmp"}]


def test_variables_left_unset_leave_no_empty_field_in_the_job(tmp_path):
    manifest = render(tmp_path)
    pod = manifest["spec"]["template"]["spec"]
    assert manifest["metadata"]["namespace"] == "default"
    assert manifest["spec"]["ttlSecondsAfterFinished"] == 3600
    for unset in ("serviceAccountName", "nodeSelector", "tolerations", "imagePullSecrets"):
        assert unset not in pod
    assert pod["volumes"] == [{"name": "dendro-tmp", "emptyDir": {}}]


def test_the_job_is_named_and_labelled_for_the_dendro_job_its_flow_run_and_attempt(tmp_path):
    manifest = render(tmp_path, attempt=1)
    labels = {"app.kubernetes.io/managed-by": "dendro-prefect", JOB_ID_LABEL: "p1.abcdefgh",
              FLOW_RUN_LABEL: "8f9e7c1a-0000-4000-8000-000000000001", ATTEMPT_LABEL: "1"}
    assert manifest["metadata"]["name"] == "dendro-p1-abcdefgh-r1"
    assert manifest["metadata"]["labels"] == labels == manifest["spec"]["template"]["metadata"]["labels"]


def test_a_job_runs_once_never_restarted_by_kubernetes_whatever_the_template_says(tmp_path):
    template = copy.deepcopy(POOL_DEFAULT)
    template["spec"]["backoffLimit"] = 6
    template["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    manifest = render(tmp_path, template)
    assert manifest["spec"]["backoffLimit"] == 0
    assert manifest["spec"]["template"]["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize("time_limit_sec, margin, expected", [(3600.0, 60.0, 3660), (100.5, 0.0, 100),
                                                              (None, 60.0, None)])
def test_the_active_deadline_is_the_time_limit_plus_the_margin(tmp_path, time_limit_sec, margin, expected):
    manifest = render(tmp_path, margin=margin, time_limit_sec=time_limit_sec)
    assert manifest["spec"].get("activeDeadlineSeconds") == expected


@pytest.mark.parametrize("num_cpus, memory_gb, num_gpus, expected", [
    (2, 4.0, 0, {"cpu": "2", "memory": "4096Mi"}),
    (0, 0.001, 0, {"cpu": "1", "memory": "16Mi"}),  # at least one CPU and 16 Mi
    (8, 32.0, 2, {"cpu": "8", "memory": "32768Mi", "nvidia.com/gpu": "2"}),
])
def test_requests_and_limits_are_the_jobs_resources(tmp_path, num_cpus, memory_gb, num_gpus, expected):
    resources = app_container(render(tmp_path, num_cpus=num_cpus, memory_gb=memory_gb,
                                     num_gpus=num_gpus))["resources"]
    assert resources == {"requests": expected, "limits": expected}


def test_the_app_runs_its_executable_in_a_working_directory_under_tmp_with_the_jobs_environment(tmp_path):
    container = app_container(render(tmp_path))
    assert container["image"] == "ghcr.io/lab/app:1" and container["name"] == "app"
    assert container["command"] == ["/bin/sh", "-c", 'mkdir -p /tmp/working && cd /tmp/working && exec "$0" "$@"',
                                    "/app/main.py"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["JOB_ID"] == "p1.abcdefgh" and env["DENDRO_URL"] == "https://central.example"
    assert env["DENDRO_JOB_CLEANUP_DIR"] == "/tmp" and env["DENDRO_JOB_WORKING_DIR"] == "/tmp/working"
    assert "DENDRO_FORCE_STATUS_UPDATES" not in env


def test_a_later_attempt_may_report_running_again(tmp_path):
    env = {item["name"]: item.get("value") for item in app_container(render(tmp_path, attempt=1))["env"]}
    assert env["DENDRO_FORCE_STATUS_UPDATES"] == "1"


def test_the_key_reaches_the_container_from_its_secret_only(tmp_path):
    manifest = render(tmp_path)
    assert JOB_KEY not in json.dumps(manifest) and base64.b64encode(JOB_KEY.encode()).decode() not in json.dumps(
        manifest)
    (key,) = [item for item in app_container(manifest)["env"] if item["name"] == "JOB_PRIVATE_KEY"]
    assert key == {"name": "JOB_PRIVATE_KEY",
                   "valueFrom": {"secretKeyRef": {"name": "dendro-p1-abcdefgh-key", "key": "JOB_PRIVATE_KEY"}}}


def test_the_secret_holds_the_key_under_the_jobs_name_and_labels(tmp_path):
    request = launch_request(tmp_path)
    labels = job_labels(request, 0)
    secret = job_secret(request, "dendro-p1-abcdefgh", "lab", labels)
    assert secret["metadata"] == {"name": "dendro-p1-abcdefgh-key", "namespace": "lab", "labels": labels}
    assert secret["type"] == "Opaque"
    assert base64.b64decode(secret["data"]["JOB_PRIVATE_KEY"]).decode() == JOB_KEY


def test_rendering_leaves_the_pools_template_as_it_was(tmp_path):
    template = copy.deepcopy(POOL_DEFAULT)
    template["spec"]["template"]["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    before = copy.deepcopy(template)
    render(tmp_path, template)
    render(tmp_path, template, attempt=1)
    assert template == before


def test_an_app_without_image_cannot_run_on_kubernetes(tmp_path):
    with pytest.raises(ValueError, match="app letter_count has no appImage to run on Kubernetes"):
        render(tmp_path, app_image=None)
