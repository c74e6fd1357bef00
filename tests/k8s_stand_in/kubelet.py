"""The node agent (scheduler + kubelet): binds pods that fit, fakes image pulls (images listed as missing fail),
resolves config, runs the first container as a local process, enforces the memory limit by sampling the process
group's RSS (SIGKILL → OOMKilled, 137), kills processes of deleted or evicted pods, and writes pod status and events."""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from . import podstatus as ps
from .containers import ConfigError, MountError, StartError, pod_dir, process_spec
from .events import NODE_NAME, EventRecorder
from .meta import rfc3339
from .node import unschedulable_message
from .options import Options
from .process import ContainerProcess, scan
from .quantities import parse_quantity
from .store import Store

log = logging.getLogger(__name__)
RETRY_SECONDS = 1.0
DRAIN_SECONDS = 2.0
SAMPLE_SECONDS = 0.2


@dataclass
class PodRuntime:
    base: Path
    process: ContainerProcess | None = None
    next_try: float = 0.0
    image_ready: bool = False
    pull_failed_at: float | None = None
    backing_off: bool = False
    oom: bool = False
    started_at: str = ""
    exited_at: float | None = None
    term_sent_at: float | None = None


def log_path(options: Options, pod: dict) -> Path:
    return pod_dir(options.workdir, pod) / "container.log"


class Kubelet:
    def __init__(self, store: Store, recorder: EventRecorder, options: Options) -> None:
        self.store, self.recorder, self.options = store, recorder, options
        self.pid_dir = options.workdir / "pids"
        self.runtimes: dict[str, PodRuntime] = {}
        self.usage: dict[int, tuple[list[int], int]] = {}
        self.sampled_at = 0.0

    def event(self, pod: dict, type_: str, reason: str, message: str, component: str = "kubelet") -> None:
        field_path = "spec.containers{%s}" % pod["spec"]["containers"][0]["name"] if component == "kubelet" else None
        self.recorder.record(pod, type_, reason, message, component, field_path)

    def pgids(self) -> set[int]:
        return {rt.process.pgid for rt in self.runtimes.values() if rt.process}

    def sync(self, now: float) -> None:
        if now - self.sampled_at >= SAMPLE_SECONDS:
            self.usage, self.sampled_at = scan(self.pgids()), now
        pods = sorted(self.store.list("pods"), key=lambda p: int(p["metadata"]["resourceVersion"]))
        bound = [p for p in pods if p["spec"].get("nodeName") and p["status"].get("phase") not in ps.TERMINAL]
        for pod in pods:
            try:
                self.sync_pod(pod, now, bound)
            except Exception:  # one broken pod must not stop the node
                log.exception("kubelet failed on pod %s", pod["metadata"]["name"])
        live = {pod["metadata"]["uid"] for pod in pods}
        for uid in [uid for uid in self.runtimes if uid not in live]:
            self.forget(uid)

    def forget(self, uid: str) -> None:
        rt = self.runtimes.pop(uid)
        if rt.process:
            rt.process.signal(signal.SIGKILL)
            rt.process.close(self.pid_dir)

    def shutdown(self) -> None:
        for uid in list(self.runtimes):
            self.forget(uid)

    def sync_pod(self, pod: dict, now: float, bound: list[dict]) -> None:
        uid = pod["metadata"]["uid"]
        rt = self.runtimes.setdefault(uid, PodRuntime(pod_dir(self.options.workdir, pod)))
        if pod["metadata"].get("deletionTimestamp"):
            self.terminate(pod, rt, now)
        elif pod["status"].get("phase") in ps.TERMINAL:
            if rt.process:  # evicted, or failed by a controller: the process must go
                rt.process.signal(signal.SIGKILL)
                self.reap(rt, now)
        elif not pod["spec"].get("nodeName"):
            if now >= rt.next_try:
                self.schedule(pod, rt, now, bound)
        elif rt.process is None:
            if now >= rt.next_try:
                self.start(pod, rt, now)
        else:
            self.monitor(pod, rt, now)

    def schedule(self, pod: dict, rt: PodRuntime, now: float, bound: list[dict]) -> None:
        message = unschedulable_message(pod, [p for p in bound if p["metadata"]["uid"] != pod["metadata"]["uid"]],
                                        self.options)
        if message:
            ps.set_condition(pod, "PodScheduled", "False", "Unschedulable", message)
            self.store.update("pods", pod)
            self.recorder.record(pod, "Warning", "FailedScheduling", message, "default-scheduler")
            rt.next_try = now + RETRY_SECONDS
            return
        ps.bind(pod)
        bound.append(self.store.update("pods", pod))
        meta = pod["metadata"]
        self.recorder.record(pod, "Normal", "Scheduled",
                             f"Successfully assigned {meta['namespace']}/{meta['name']} to {NODE_NAME}",
                             "default-scheduler")

    def pull(self, pod: dict, rt: PodRuntime, now: float) -> bool:
        """Fake image pull: True when the image is 'present'; missing images go ErrImagePull → ImagePullBackOff."""
        container = pod["spec"]["containers"][0]
        image = container["image"]
        if image not in self.options.missing_images and f"{image}:latest" not in self.options.missing_images:
            if container.get("imagePullPolicy") == "Always":
                self.event(pod, "Normal", "Pulling", f'Pulling image "{image}"')
                self.event(pod, "Normal", "Pulled", f'Successfully pulled image "{image}" in 0s (0s including '
                                                    "waiting). Image size: 0 bytes.")
            else:
                self.event(pod, "Normal", "Pulled", f'Container image "{image}" already present on machine')
            rt.image_ready = True
            return True
        failure = (f'failed to pull and unpack image "{image}": failed to resolve reference "{image}": '
                   f"{image}: not found")
        if rt.pull_failed_at is None:
            rt.pull_failed_at = now
            self.event(pod, "Normal", "Pulling", f'Pulling image "{image}"')
            self.event(pod, "Warning", "Failed", f'Failed to pull image "{image}": {failure}')
            self.event(pod, "Warning", "Failed", "Error: ErrImagePull")
            ps.set_containers(pod, ps.waiting("ErrImagePull", failure))
            self.store.update("pods", pod)
        elif not rt.backing_off and now - rt.pull_failed_at >= RETRY_SECONDS:
            rt.backing_off = True
            self.event(pod, "Normal", "BackOff", f'Back-off pulling image "{image}"')
            self.event(pod, "Warning", "Failed", "Error: ImagePullBackOff")
            ps.set_containers(pod, ps.waiting("ImagePullBackOff",
                                              f'Back-off pulling image "{image}": ErrImagePull: {failure}'))
            self.store.update("pods", pod)
        return False

    def start(self, pod: dict, rt: PodRuntime, now: float) -> None:
        if not rt.image_ready and not self.pull(pod, rt, now):
            return
        name = pod["spec"]["containers"][0]["name"]
        try:
            spec = process_spec(pod, self.store, rt.base)
            rt.process = ContainerProcess(spec, log_path(self.options, pod), self.pid_dir, pod["metadata"]["uid"])
        except MountError as error:
            self.event(pod, "Warning", "FailedMount", str(error))
            rt.next_try = now + RETRY_SECONDS
            return
        except ConfigError as error:
            ps.set_containers(pod, ps.waiting("CreateContainerConfigError", str(error)))
            self.store.update("pods", pod)
            self.event(pod, "Warning", "Failed", f"Error: {error}")
            rt.next_try = now + RETRY_SECONDS
            return
        except StartError as error:
            self.event(pod, "Warning", "Failed", f"Error: {error}")
            epoch = rfc3339(0)
            ps.finish(pod, ps.terminated(128, "StartError", epoch, epoch, message=str(error)))
            self.store.update("pods", pod)
            return
        rt.started_at = rfc3339()
        container_id = f"stand-in://{rt.process.pgid}"
        self.event(pod, "Normal", "Created", f"Created container: {name}")
        self.event(pod, "Normal", "Started", f"Started container: {name}")
        pod["status"].update(phase="Running", podIP="127.0.0.1", podIPs=[{"ip": "127.0.0.1"}])
        ps.set_containers(pod, {"running": {"startedAt": rt.started_at}}, ready=True, started=True,
                          container_id=container_id)
        ps.set_condition(pod, "PodReadyToStartContainers", "True")
        ps.set_ready(pod, True)
        self.store.update("pods", pod)

    def memory_limit(self, pod: dict) -> float | None:
        limit = ((pod["spec"]["containers"][0].get("resources") or {}).get("limits") or {}).get("memory")
        return parse_quantity(limit) if limit else None

    def monitor(self, pod: dict, rt: PodRuntime, now: float) -> None:
        process = rt.process
        if process.poll() is None:
            limit = self.memory_limit(pod)
            if limit is not None and self.usage.get(process.pgid, ([], 0))[1] > limit:
                rt.oom = True
                process.signal(signal.SIGKILL)
            return
        if not self.reap(rt, now):
            return
        code = process.exit_code()
        reason = "OOMKilled" if rt.oom else "Completed" if code == 0 else "Error"
        finished = rfc3339(rt.exited_at)
        container_id = f"stand-in://{process.pgid}"
        ps.finish(pod, ps.terminated(code, reason, rt.started_at, finished, container_id), container_id)
        self.store.update("pods", pod)

    def reap(self, rt: PodRuntime, now: float) -> bool:
        """After the main process exits: kill its group, wait (briefly) for the log pumps; True once closed."""
        process = rt.process
        if process.poll() is None:
            return False
        if rt.exited_at is None:
            rt.exited_at = now
            process.signal(signal.SIGKILL)
        if not process.drained() and now - rt.exited_at < DRAIN_SECONDS:
            return False
        process.close(self.pid_dir)
        rt.process = None
        return True

    def terminate(self, pod: dict, rt: PodRuntime, now: float) -> None:
        """Graceful deletion: SIGTERM, SIGKILL after the (capped) grace period, terminal status, then removal."""
        process = rt.process
        if process and process.poll() is None:
            if rt.term_sent_at is None:
                rt.term_sent_at = now
                process.signal(signal.SIGTERM)
                self.event(pod, "Normal", "Killing", f"Stopping container {pod['spec']['containers'][0]['name']}")
            grace = pod["metadata"].get("deletionGracePeriodSeconds", 30)
            if now - rt.term_sent_at >= min(grace, self.options.kill_grace_cap):
                process.signal(signal.SIGKILL)
            return
        if process and not self.reap(rt, now):
            return
        if process and pod["status"].get("phase") not in ps.TERMINAL:
            code = process.exit_code()
            container_id = f"stand-in://{process.pgid}"
            state = ps.terminated(code, "Completed" if code == 0 else "Error", rt.started_at, rfc3339(rt.exited_at),
                                  container_id)
            ps.finish(pod, state, container_id)
            self.store.update("pods", pod)
        self.store.remove("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])
        self.runtimes.pop(pod["metadata"]["uid"], None)

    def evict(self, pod: dict) -> dict:
        """Node-pressure eviction: the pod fails with reason Evicted and its process is killed."""
        if pod["status"].get("phase") in ps.TERMINAL:
            return pod
        message = "The node was low on resource: memory. "
        rt = self.runtimes.get(pod["metadata"]["uid"])
        name = pod["spec"]["containers"][0]["name"]
        if rt and rt.process:
            rt.process.signal(signal.SIGKILL)
            self.event(pod, "Normal", "Killing", f"Stopping container {name}")
        self.event(pod, "Warning", "Evicted", message.strip())
        now = rfc3339()
        started = (ps.first_state(pod).get("running") or {}).get("startedAt", now)
        ps.finish(pod, ps.terminated(137, "Error", started, now, message="The container was killed by eviction"))
        pod["status"].update(phase="Failed", reason="Evicted", message=message)
        ps.set_condition(pod, "DisruptionTarget", "True", "TerminationByKubelet", message.strip())
        return self.store.update("pods", pod)
