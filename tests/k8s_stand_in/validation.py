"""The apiserver's checks that a worker is most likely to trip: malformed bodies are 400, bad values are 422 Invalid
(names, labels, a Job without containers or with restartPolicy Always, secret data that is not base64)."""

from __future__ import annotations

import base64
import binascii
import re

from .errors import bad_request, invalid
from .quantities import parse_quantity
from .resources import Resource

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def require_type(value: object, kind: type | tuple, field: str) -> None:
    """Wrong JSON types fail decoding in the apiserver, which answers 400 before any validation."""
    if value is not None and not isinstance(value, kind):
        raise bad_request(f"json: cannot unmarshal {type(value).__name__} into Go struct field {field}")


def require_strings(values: object, field: str) -> None:
    require_type(values, list, field)
    for value in values or []:
        require_type(value, str, field)


def label_problems(labels: dict, field: str) -> list[tuple[str, str]]:
    problems = []
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if len(name) > 63 or not LABEL_NAME.match(name) or prefix and not DNS_SUBDOMAIN.match(prefix):
            problems.append((f"{field}", f'Invalid value: "{key}": name part must consist of alphanumeric '
                                         "characters, '-', '_' or '.', and must start and end with an alphanumeric "
                                         "character"))
        if not isinstance(value, str):
            kind = type(value).__name__
            raise bad_request(f"json: cannot unmarshal {kind} into Go struct field {field} of type string")
        if len(value) > 63 or value and not LABEL_NAME.match(value):
            problems.append((f"{field}", f'Invalid value: "{value}": a valid label must be an empty string or consist '
                                         "of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                                         "alphanumeric character (at most 63 characters)"))
    return problems


def metadata_problems(meta: dict, res: Resource, field: str = "metadata") -> list[tuple[str, str]]:
    require_type(meta, dict, field)
    require_type(meta.get("labels"), dict, f"{field}.labels")
    require_type(meta.get("annotations"), dict, f"{field}.annotations")
    problems = label_problems(meta.get("labels") or {}, f"{field}.labels")
    name = meta.get("name")
    if field != "metadata":
        return problems
    if not name:
        return problems + [("metadata.name", "Required value: name or generateName is required")]
    pattern, limit = (DNS_LABEL, 63) if res.plural in ("namespaces", "jobs") else (DNS_SUBDOMAIN, 253)
    if not isinstance(name, str) or len(name) > limit or not pattern.match(name):
        problems.append(("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 name must consist of lower '
                                          f"case alphanumeric characters, '-' or '.' (at most {limit} characters)"))
    return problems


def container_problems(container: dict, field: str, volumes: set[str]) -> list[tuple[str, str]]:
    require_type(container, dict, field)
    require_strings(container.get("command"), f"{field}.command")
    require_strings(container.get("args"), f"{field}.args")
    require_type(container.get("env"), list, f"{field}.env")
    problems = []
    if not DNS_LABEL.match(str(container.get("name") or "")):
        problems.append((f"{field}.name", f'Invalid value: "{container.get("name")}": must be a DNS label'))
    if not container.get("image"):
        problems.append((f"{field}.image", "Required value"))
    for i, env in enumerate(container.get("env") or []):
        require_type(env, dict, f"{field}.env[{i}]")
        require_type(env.get("value"), str, f"{field}.env[{i}].value")
        if not env.get("name"):
            problems.append((f"{field}.env[{i}].name", "Required value"))
    for i, mount in enumerate(container.get("volumeMounts") or []):
        if mount.get("name") not in volumes:
            problems.append((f"{field}.volumeMounts[{i}].name", f'Not found: "{mount.get("name")}"'))
        if not str(mount.get("mountPath") or "").startswith("/"):
            problems.append((f"{field}.volumeMounts[{i}].mountPath", "Invalid value: must be an absolute path"))
    for kind, values in (container.get("resources") or {}).items():
        for name, value in (values or {}).items() if kind in ("limits", "requests") else []:
            try:
                parse_quantity(value)
            except ValueError as error:
                problems.append((f"{field}.resources.{kind}[{name}]", f'Invalid value: "{value}": {error}'))
    return problems


def pod_spec_problems(spec: object, field: str, restart_policies: tuple[str, ...]) -> list[tuple[str, str]]:
    require_type(spec, dict, field)
    if not isinstance(spec, dict) or not spec.get("containers"):
        return [(f"{field}.containers", "Required value")]
    require_type(spec["containers"], list, f"{field}.containers")
    volumes = {volume.get("name") for volume in spec.get("volumes") or []}
    problems = []
    names = [container.get("name") for container in spec["containers"] if isinstance(container, dict)]
    if len(set(names)) != len(names):
        problems.append((f"{field}.containers", "Duplicate value: container names must be unique"))
    for i, container in enumerate(spec["containers"]):
        problems += container_problems(container, f"{field}.containers[{i}]", volumes)
    policy = spec.get("restartPolicy", "Always" if "Always" in restart_policies else None)
    supported = ", ".join(f'"{p}"' for p in restart_policies)
    if policy is None:
        problems.append((f"{field}.restartPolicy", f"Required value: valid values: {supported}"))
    elif policy not in restart_policies:
        problems.append((f"{field}.restartPolicy", f'Unsupported value: "{policy}": supported values: {supported}'))
    return problems


def pod_template_problems(owner: dict, restart_policies: tuple[str, ...]) -> tuple[dict, list[tuple[str, str]]]:
    """The spec of a Job or Deployment (empty when missing) and the problems of its pod template."""
    spec = owner.get("spec")
    require_type(spec, dict, "spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("template"), dict):
        return {}, [("spec.template", "Required value")]
    template = spec["template"]
    problems = metadata_problems(template.get("metadata") or {}, None, "spec.template.metadata")
    return spec, problems + pod_spec_problems(template.get("spec"), "spec.template.spec", restart_policies)


def job_problems(job: dict) -> list[tuple[str, str]]:
    spec, problems = pod_template_problems(job, ("OnFailure", "Never"))
    if not spec:
        return problems
    for field, minimum in (("backoffLimit", 0), ("activeDeadlineSeconds", 1), ("ttlSecondsAfterFinished", 0),
                           ("completions", 0), ("parallelism", 0)):
        value = spec.get(field)
        require_type(value, int, f"spec.{field}")
        if value is not None and value < minimum:
            problems.append((f"spec.{field}", f"Invalid value: {value}: must be greater than or equal to {minimum}"))
    return problems


def secret_problems(secret: dict) -> list[tuple[str, str]]:
    require_type(secret.get("data"), dict, "data")
    require_type(secret.get("stringData"), dict, "stringData")
    problems = []
    for key, value in {**(secret.get("data") or {}), **(secret.get("stringData") or {})}.items():
        if not SECRET_KEY.match(key):
            problems.append((f"data[{key}]", f'Invalid value: "{key}": a valid config key must consist of '
                                             "alphanumeric characters, '-', '_' or '.'"))
    for key, value in (secret.get("data") or {}).items():
        require_type(value, str, f"data[{key}]")
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(f"illegal base64 data in Secret.data[{key}]")
    return problems


def deployment_problems(deployment: dict) -> list[tuple[str, str]]:
    """A Deployment's pod template, and a selector that selects it (what the apiserver checks of one)."""
    spec, problems = pod_template_problems(deployment, ("Always",))
    if not spec:
        return problems
    wanted = ((spec.get("selector") or {}).get("matchLabels") or {})
    labels = (spec["template"].get("metadata") or {}).get("labels") or {}
    if not wanted:
        problems.append(("spec.selector", "Required value"))
    elif any(labels.get(key) != value for key, value in wanted.items()):
        problems.append(("spec.template.metadata.labels", f"Invalid value: {labels}: `selector` does not match "
                                                          "template `labels`"))
    return problems


def validate(res: Resource, obj: dict) -> None:
    """Raise the apiserver's 400/422 for a body that it would refuse on create."""
    if not isinstance(obj, dict):
        raise bad_request("the body of the request was in an unknown format")
    meta = obj.get("metadata") or {}
    problems = metadata_problems(meta, res)
    if res.plural == "jobs":
        problems += job_problems(obj)
    elif res.plural == "pods":
        problems += pod_spec_problems(obj.get("spec"), "spec", ("Always", "OnFailure", "Never"))
    elif res.plural == "secrets":
        problems += secret_problems(obj)
    elif res.plural == "deployments":
        problems += deployment_problems(obj)
    if problems:
        raise invalid(res.qualified_kind, str(meta.get("name") or meta.get("generateName") or ""), problems,
                      res.group, res.kind)
