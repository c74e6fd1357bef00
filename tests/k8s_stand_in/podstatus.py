"""Pod status writing: conditions that keep their transition times, and container statuses with every field the
strict client requires (name, image, imageID, ready, restartCount)."""

from __future__ import annotations

from .events import NODE_NAME
from .meta import rfc3339

CONDITION_ORDER = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled",
                   "DisruptionTarget")
TERMINAL = ("Succeeded", "Failed")


def set_condition(pod: dict, type_: str, status: str, reason: str | None = None, message: str | None = None) -> None:
    conditions = {c["type"]: c for c in pod["status"].get("conditions") or []}
    previous = conditions.get(type_)
    condition = {"type": type_, "status": status, "lastProbeTime": None,
                 "lastTransitionTime": previous["lastTransitionTime"] if previous and previous["status"] == status
                 else rfc3339()}
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    conditions[type_] = condition
    pod["status"]["conditions"] = [conditions[t] for t in CONDITION_ORDER if t in conditions]


def set_ready(pod: dict, ready: bool, reason: str | None = None) -> None:
    for type_ in ("Ready", "ContainersReady"):
        set_condition(pod, type_, "True" if ready else "False", None if ready else reason)


def set_containers(pod: dict, state: dict, ready: bool = False, started: bool = False, container_id: str = "",
                   last_state: dict | None = None) -> None:
    """Every container gets the first container's state: only the first one runs here."""
    statuses = []
    for container in pod["spec"]["containers"]:
        status = {"name": container["name"], "image": container["image"], "imageID": "",
                  "ready": ready, "restartCount": 0, "started": started, "state": state, "lastState": last_state or {}}
        if container_id:
            status["containerID"] = container_id
            status["imageID"] = f"stand-in://{container['image']}"
        statuses.append(status)
    pod["status"]["containerStatuses"] = statuses


def waiting(reason: str, message: str | None = None) -> dict:
    return {"waiting": {"reason": reason, **({"message": message} if message else {})}}


def first_state(pod: dict) -> dict:
    statuses = pod["status"].get("containerStatuses") or []
    return statuses[0].get("state") or {} if statuses else {}


def bind(pod: dict) -> None:
    """What binding to the node and the kubelet's first look write into the pod."""
    pod["spec"]["nodeName"] = NODE_NAME
    pod["status"].update(hostIP="127.0.0.1", hostIPs=[{"ip": "127.0.0.1"}], startTime=rfc3339())
    set_condition(pod, "PodScheduled", "True")
    set_condition(pod, "PodReadyToStartContainers", "False")
    set_condition(pod, "Initialized", "True")
    set_ready(pod, False, "ContainersNotReady")
    set_containers(pod, waiting("ContainerCreating"))


def terminated(exit_code: int, reason: str, started_at: str, finished_at: str, container_id: str = "",
               message: str | None = None) -> dict:
    state = {"exitCode": exit_code, "reason": reason, "startedAt": started_at, "finishedAt": finished_at}
    if container_id:
        state["containerID"] = container_id
    if message:
        state["message"] = message
    return {"terminated": state}


def finish(pod: dict, state: dict, container_id: str = "") -> None:
    """The container ended: the pod is terminal (restartPolicy is treated as Never)."""
    code = state["terminated"]["exitCode"]
    pod["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
    set_containers(pod, state, container_id=container_id)
    set_condition(pod, "PodReadyToStartContainers", "False")
    set_ready(pod, False, "PodCompleted")
