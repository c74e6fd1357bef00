"""The cluster's one node and the scheduler's fit check: a pod binds only if its requests fit what is left."""

from __future__ import annotations

import platform

from .events import NODE_NAME
from .meta import rfc3339
from .options import Options
from .quantities import format_cpu, parse_quantity

KUBE_VERSION = "v1.33.0-stand-in"


def allocatable(options: Options) -> dict[str, str]:
    resources = {"cpu": format_cpu(options.cpu), "memory": options.memory, "pods": "110",
                 "ephemeral-storage": "100Gi"}
    if options.gpus:
        resources["nvidia.com/gpu"] = str(options.gpus)
    return resources


def node_object(options: Options) -> dict:
    now = rfc3339()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
             "lastHeartbeatTime": now, "lastTransitionTime": now}
    info = {"architecture": arch, "bootID": "stand-in", "containerRuntimeVersion": "stand-in://1.0",
            "kernelVersion": platform.release(), "kubeProxyVersion": KUBE_VERSION, "kubeletVersion": KUBE_VERSION,
            "machineID": "stand-in", "operatingSystem": "linux", "osImage": "stand-in", "systemUUID": "stand-in"}
    return {"kind": "Node", "apiVersion": "v1",
            "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux",
                                                       "kubernetes.io/arch": arch}},
            "spec": {},
            "status": {"capacity": allocatable(options), "allocatable": allocatable(options), "conditions": [ready],
                       "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                                     {"type": "Hostname", "address": NODE_NAME}], "nodeInfo": info}}


def container_requests(container: dict) -> dict[str, float]:
    """Requests, defaulting per resource to the limit as the apiserver does."""
    resources = container.get("resources") or {}
    merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    return {name: parse_quantity(value) for name, value in merged.items()}


def pod_requests(pod: dict) -> dict[str, float]:
    total: dict[str, float] = {"pods": 1}
    for container in pod["spec"].get("containers") or []:
        for name, value in container_requests(container).items():
            total[name] = total.get(name, 0) + value
    return total


def unschedulable_message(pod: dict, bound: list[dict], options: Options) -> str | None:
    """None when the pod fits beside the bound pods, else the scheduler's FailedScheduling message."""
    free = {name: parse_quantity(value) for name, value in allocatable(options).items()}
    for other in bound:
        for name, value in pod_requests(other).items():
            free[name] = free.get(name, 0) - value
    reasons = sorted("Too many pods" if name == "pods" else f"Insufficient {name}"
                     for name, value in pod_requests(pod).items() if value > 0 and value > free.get(name, 0) + 1e-9)
    if not reasons:
        return None
    return "0/1 nodes are available: " + ", ".join(f"1 {reason}" for reason in reasons) + "."
