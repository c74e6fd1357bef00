"""deployments/kubernetes: the in-cluster dendro-kubernetes worker's manifests. Each object is read into the
kubernetes client's model of its kind (unknown fields refused), the Role grants exactly what the worker's code calls
(each call of the Kubernetes API in dendro_prefect/workers/kubernetes/ mapped to the permission it needs: a new call
fails this test until the Role is considered), and the whole file is applied with the client's own
`create_from_yaml` to the API-server stand-in (tests/k8s_stand_in: no real cluster runs on this machine), which
stores what a cluster would accept; no controller runs the Deployment there."""

from __future__ import annotations

import re

import pytest
import yaml
from kubernetes import client, config, utils

from tests.conftest import REPO
from tests.k8s_stand_in import running_api_server
from tests.secrets_scan import record_secret

MANIFESTS = REPO / "deployments" / "kubernetes" / "dendro-kubernetes-worker.yaml"
WORKER_CODE = REPO / "dendro_prefect" / "workers" / "kubernetes"
# Each Kubernetes API call of the worker → (API group, resource, verbs). The list calls feed the watch API
# (namespace_watch.py: one list, then watch).
PERMISSIONS = {
    "create_namespaced_job": ("batch", "jobs", {"create"}),
    "delete_namespaced_job": ("batch", "jobs", {"delete"}),
    "list_namespaced_job": ("batch", "jobs", {"list", "watch"}),
    "list_namespaced_pod": ("", "pods", {"list", "watch"}),
    "read_namespaced_pod_log": ("", "pods/log", {"get"}),
    "create_namespaced_secret": ("", "secrets", {"create"}),
    "delete_namespaced_secret": ("", "secrets", {"delete"}),
    "list_namespaced_event": ("", "events", {"list"}),
}
# The Secret's ownerReference with blockOwnerDeletion (launcher.py) needs update of the Job's finalizers.
OWNER_REFERENCE = ("batch", "jobs/finalizers", {"update"})


def documents() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(MANIFESTS.read_text()) if doc]


def model_of(document: dict):
    """The document as the client's model of its kind, refusing a field the model does not know."""
    name = "V1" + document["kind"]
    model = getattr(client, name)

    def check(data, model_class, where: str) -> None:
        if not isinstance(data, dict) or not hasattr(model_class, "attribute_map"):
            return
        known = {json_name: attr for attr, json_name in model_class.attribute_map.items()}
        for key, value in data.items():
            assert key in known, f"{where}.{key}: not a field of {model_class.__name__}"
            kind = model_class.openapi_types[known[key]]
            inner = re.fullmatch(r"[lL]ist\[(\w+)\]", kind)
            nested = getattr(client, inner.group(1) if inner else kind, None)
            for item in (value if inner else [value]):
                check(item, nested, f"{where}.{key}")

    check(document, model, document["kind"])
    return client.ApiClient()._ApiClient__deserialize(document, name)


def granted(role: dict) -> dict[tuple[str, str], set[str]]:
    rules = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                rules.setdefault((group, resource), set()).update(rule["verbs"])
    return rules


def test_every_object_is_a_valid_model_of_its_kind():
    kinds = [model_of(document).kind for document in documents()]
    assert kinds == ["Namespace", "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding",
                     "Deployment"]


def test_the_role_grants_what_the_worker_calls_and_nothing_more():
    calls = set()
    for source in WORKER_CODE.glob("*.py"):
        calls |= set(re.findall(r"\b((?:create|read|list|delete|patch|replace)_namespaced_\w+)\(", source.read_text()))
    assert calls == set(PERMISSIONS), "a Kubernetes API call of the worker without a permission here, or gone"
    needed: dict[tuple[str, str], set[str]] = {}
    for group, resource, verbs in [*PERMISSIONS.values(), OWNER_REFERENCE]:
        needed.setdefault((group, resource), set()).update(verbs)
    role = next(d for d in documents() if d["kind"] == "Role")
    assert granted(role) == needed
    cluster_role = next(d for d in documents() if d["kind"] == "ClusterRole")
    assert cluster_role["rules"] == [{"apiGroups": [""], "resources": ["namespaces"], "resourceNames": ["kube-system"],
                                      "verbs": ["get"]}]  # cluster.py's read_namespace("kube-system"): its identity


def test_the_deployment_runs_one_named_worker_with_its_health_probe_and_the_configuration_read_only():
    deployment = next(d for d in documents() if d["kind"] == "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == next(d for d in documents() if d["kind"] == "ServiceAccount")["metadata"]["name"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[command.index("--pool") + 1] == "kubernetes" and "--with-healthcheck" in command
    env = {item["name"]: item["value"] for item in container["env"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": int(env["PREFECT_WORKER_WEBSERVER_PORT"])}
    mount = container["volumeMounts"][0]
    assert mount["mountPath"] == env["DENDRO_PREFECT_HOME"] and mount["readOnly"] is True


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> client.ApiClient:
    with running_api_server(tmp_path_factory.mktemp("k8s-manifests"), gpus=0) as server:
        record_secret(server.token, "kube-token")
        yield config.new_client_from_config(str(server.kubeconfig))


def test_the_manifests_apply_to_the_api_server_stand_in(api):
    created = utils.create_from_yaml(api, yaml_file=str(MANIFESTS))
    assert [obj.kind for group in created for obj in group] == [d["kind"] for d in documents()]
    deployment = client.AppsV1Api(api).read_namespaced_deployment("dendro-kubernetes-worker", "dendro")
    assert deployment.spec.template.spec.service_account_name == "dendro-kubernetes-worker"
    binding = client.RbacAuthorizationV1Api(api).read_cluster_role_binding("dendro-kubernetes-worker-cluster-identity")
    assert binding.subjects[0].name == "dendro-kubernetes-worker"
