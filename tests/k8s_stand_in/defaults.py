"""Defaulting, as the apiserver does it on create, so that objects read back look like a real cluster's (and carry
every field the strict client requires): pod spec defaults, Job selector and labels, Secret stringData → data."""

from __future__ import annotations

import base64
import copy

from .meta import new_uid, owner_reference, random_suffix

SERVER_SET_METADATA = ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
                       "deletionGracePeriodSeconds", "generation", "managedFields", "selfLink")


def prepare_metadata(obj: dict, namespace: str | None) -> None:
    """Drop what only the server may set; resolve generateName; pin the namespace from the path."""
    meta = obj.setdefault("metadata", {})
    for key in SERVER_SET_METADATA:
        meta.pop(key, None)
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = f"{meta['generateName']}{random_suffix()}"
    if namespace is not None:
        meta["namespace"] = namespace


def image_pull_policy(image: str) -> str:
    name = image.rsplit("/", 1)[-1]
    if "@" in name:
        return "IfNotPresent"
    return "Always" if ":" not in name or name.endswith(":latest") else "IfNotPresent"


def default_container(container: dict) -> None:
    container.setdefault("imagePullPolicy", image_pull_policy(str(container.get("image", ""))))
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    resources = container.setdefault("resources", {})
    for kind in ("limits", "requests"):
        if resources.get(kind):
            resources[kind] = {name: str(value) for name, value in resources[kind].items()}


def default_pod_spec(spec: dict) -> None:
    spec.setdefault("restartPolicy", "Always")
    for key, value in (("terminationGracePeriodSeconds", 30), ("dnsPolicy", "ClusterFirst"),
                       ("schedulerName", "default-scheduler"), ("securityContext", {}),
                       ("serviceAccountName", "default"), ("enableServiceLinks", True), ("priority", 0)):
        spec.setdefault(key, value)
    spec["serviceAccount"] = spec["serviceAccountName"]
    for container in spec["containers"]:
        default_container(container)


def qos_class(spec: dict) -> str:
    resources = [container.get("resources") or {} for container in spec["containers"]]
    if not any(r.get("limits") or r.get("requests") for r in resources):
        return "BestEffort"
    guaranteed = all((r.get("limits") or {}).get(name) and
                     (r.get("requests") or {}).get(name, (r.get("limits") or {}).get(name)) == r["limits"][name]
                     for r in resources for name in ("cpu", "memory"))
    return "Guaranteed" if guaranteed else "Burstable"


def default_pod(pod: dict) -> None:
    default_pod_spec(pod["spec"])
    pod["metadata"]["generation"] = 1
    pod["status"] = {"phase": "Pending", "qosClass": qos_class(pod["spec"])}


def default_job(job: dict) -> None:
    """Job defaults; the uid is chosen here because the selector and template labels must carry it."""
    uid = job["metadata"]["uid"] = new_uid()
    name = job["metadata"]["name"]
    job["metadata"]["generation"] = 1
    spec = job["spec"]
    for key, value in (("backoffLimit", 6), ("completions", 1), ("parallelism", 1),
                       ("completionMode", "NonIndexed"), ("suspend", False),
                       ("podReplacementPolicy", "TerminatingOrFailed"), ("manualSelector", None)):
        spec.setdefault(key, value)
    spec.pop("manualSelector")
    spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    labels = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
              "controller-uid": uid, "job-name": name}
    template_meta = spec["template"].setdefault("metadata", {})
    template_meta["labels"] = {**(template_meta.get("labels") or {}), **labels}
    job["metadata"]["labels"] = job["metadata"].get("labels") or dict(labels)
    default_pod_spec(spec["template"].setdefault("spec", {}))
    job["status"] = {}


def default_secret(secret: dict) -> None:
    secret.setdefault("type", "Opaque")
    data = secret.get("data") or {}
    for key, value in (secret.pop("stringData", None) or {}).items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    if data:
        secret["data"] = data


def default_namespace(namespace: dict) -> None:
    name = namespace["metadata"]["name"]
    namespace["metadata"]["labels"] = {**(namespace["metadata"].get("labels") or {}),
                                       "kubernetes.io/metadata.name": name}
    namespace["spec"] = {"finalizers": ["kubernetes"]}
    namespace["status"] = {"phase": "Active"}


DEFAULTERS = {"pods": default_pod, "jobs": default_job, "secrets": default_secret, "namespaces": default_namespace}


def pod_for_job(job: dict) -> dict:
    """The Pod the Job controller creates: the template, the job labels, a controller ownerReference."""
    template = copy.deepcopy(job["spec"]["template"])
    name = job["metadata"]["name"]
    meta = template.get("metadata") or {}
    pod = {"kind": "Pod", "apiVersion": "v1",
           "metadata": {"name": f"{name}-{random_suffix()}", "generateName": f"{name}-",
                        "namespace": job["metadata"]["namespace"], "labels": meta.get("labels") or {},
                        "ownerReferences": [owner_reference(job)]},
           "spec": template["spec"]}
    if meta.get("annotations"):
        pod["metadata"]["annotations"] = meta["annotations"]
    default_pod(pod)
    return pod
