"""Turn a pod's first container into a local process description. A process cannot mount anything, so volumes
become host directories and every mountPath prefix in command, args, env values and workingDir is rewritten to
that directory (except a path below a mount that exists on the host, such as a test's app when the repository
lives under /tmp: kept, being the only copy); env comes from the spec (value, secretKeyRef, fieldRef, envFrom secretRef) with $(VAR) expansion."""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .events import NODE_NAME
from .store import Store

MARKER_ENV = "K8S_STAND_IN_POD_UID"  # lets the harness recognise the processes it must clean up
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class ConfigError(Exception):
    """The kubelet's CreateContainerConfigError: env refers to a Secret or key that is not there (retried)."""


class MountError(Exception):
    """The kubelet's FailedMount: a volume cannot be set up (retried)."""


class StartError(Exception):
    """The runtime could not start the container (the pod fails, exit code 128)."""


@dataclass
class ProcessSpec:
    argv: list[str]
    env: dict[str, str]
    cwd: Path


def pod_dir(workdir: Path, pod: dict) -> Path:
    meta = pod["metadata"]
    return workdir / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"


def secret_data(store: Store, namespace: str, name: str) -> dict[str, str] | None:
    secret = store.get("secrets", namespace, name)
    if secret is None:
        return None
    return {key: base64.b64decode(value).decode("utf-8", "surrogateescape")
            for key, value in (secret.get("data") or {}).items()}


def prepare_volumes(pod: dict, store: Store, base: Path) -> dict[str, Path]:
    """Host directory for each volume: emptyDir (private, per pod), secret (files written), hostPath (as is)."""
    paths = {}
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        if "emptyDir" in volume:
            paths[name] = base / "volumes" / name
            paths[name].mkdir(parents=True, exist_ok=True)
        elif "hostPath" in volume:
            paths[name] = Path(volume["hostPath"]["path"])
        elif "secret" in volume:
            source = volume["secret"]
            data = secret_data(store, pod["metadata"]["namespace"], source.get("secretName", ""))
            if data is None and not source.get("optional"):
                raise MountError(f'MountVolume.SetUp failed for volume "{name}" : secret '
                                 f'"{source.get("secretName")}" not found')
            paths[name] = base / "volumes" / name
            paths[name].mkdir(parents=True, exist_ok=True)
            items = source.get("items") or [{"key": key, "path": key} for key in data or {}]
            for item in items:
                target = paths[name] / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text((data or {}).get(item["key"], ""), "utf-8", "surrogateescape")
        else:
            raise MountError(f'stand-in cannot set up volume "{name}": only emptyDir, secret and hostPath volumes')
    return paths


def mount_rewriter(container: dict, volumes: dict[str, Path]):
    """A function replacing each mountPath (as a whole path prefix) by its host directory, longest first."""
    mounts = {}
    for mount in container.get("volumeMounts") or []:
        host = volumes[mount["name"]] / mount.get("subPath", "")
        if mount.get("subPath"):
            host.mkdir(parents=True, exist_ok=True)
        mounts[mount["mountPath"].rstrip("/") or "/"] = str(host)
    if not mounts:
        return lambda text: text
    alternatives = "|".join(re.escape(path) for path in sorted(mounts, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w./-])({alternatives})(?![\w.-])((?:/[^\s'\":]*)?)")

    def rewrite(match: re.Match) -> str:
        # A path below a mount that exists on the host (a test's app, when the repository lives under /tmp)
        # would be hidden by the mount in a real container; here it is the only copy, so it is kept.
        if match.group(2) and Path(match.group(1) + match.group(2)).exists():
            return match.group(0)
        return mounts[match.group(1)] + match.group(2)

    return lambda text: pattern.sub(rewrite, text)


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, unknown ones kept, `$$` becomes `$`."""
    return VAR_REF.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def field_value(pod: dict, path: str) -> str:
    meta = pod["metadata"]
    simple = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
              "spec.nodeName": NODE_NAME, "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
              "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1"}
    if path in simple:
        return simple[path]
    match = re.match(r"metadata\.(labels|annotations)\['(.+)'\]$", path)
    return (meta.get(match.group(1)) or {}).get(match.group(2), "") if match else ""


def resolve_env(pod: dict, container: dict, store: Store) -> dict[str, str]:
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("secretRef") or source.get("configMapRef")
        data = secret_data(store, namespace, ref.get("name", "")) if "secretRef" in source else None
        if data is None and not ref.get("optional"):
            kind = "secret" if "secretRef" in source else "configmap"
            raise ConfigError(f'{kind} "{ref.get("name")}" not found')
        env.update({source.get("prefix", "") + key: value for key, value in (data or {}).items()})
    for var in container.get("env") or []:
        if "valueFrom" not in var:
            env[var["name"]] = expand(var.get("value", ""), env)
            continue
        origin = var["valueFrom"]
        if "secretKeyRef" in origin:
            ref = origin["secretKeyRef"]
            data = secret_data(store, namespace, ref.get("name", ""))
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'secret "{ref.get("name")}" not found' if data is None else
                                  f"couldn't find key {ref['key']} in Secret {namespace}/{ref.get('name')}")
            env[var["name"]] = data[ref["key"]]
        elif "fieldRef" in origin:
            env[var["name"]] = field_value(pod, origin["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in origin and not origin["configMapKeyRef"].get("optional"):
            raise ConfigError(f'configmap "{origin["configMapKeyRef"].get("name")}" not found')
    return env


def process_spec(pod: dict, store: Store, base: Path) -> ProcessSpec:
    """Everything needed to start the first container; raises MountError / ConfigError / StartError."""
    container = pod["spec"]["containers"][0]
    rewrite = mount_rewriter(container, prepare_volumes(pod, store, base))
    env = {name: rewrite(value) for name, value in resolve_env(pod, container, store).items()}
    argv = [rewrite(expand(part, env)) for part in (container.get("command") or []) + (container.get("args") or [])]
    if not container.get("command"):
        raise StartError("the stand-in cannot run an image's entrypoint: the container needs a command")
    cwd = Path(rewrite(container["workingDir"])) if container.get("workingDir") else base
    try:
        cwd.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StartError(f"cannot create working directory {cwd}: {error}") from error
    home = base / "home"
    home.mkdir(parents=True, exist_ok=True)
    base_env = {"PATH": os.environ.get("PATH", DEFAULT_PATH), "HOSTNAME": pod["metadata"]["name"],
                "HOME": str(home), MARKER_ENV: pod["metadata"]["uid"]}
    return ProcessSpec(argv, {**base_env, **env}, cwd)
