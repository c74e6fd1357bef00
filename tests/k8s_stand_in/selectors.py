"""Label and field selectors: the subset of the apiserver's syntax a controller uses (=, ==, !=, in, notin, exists)."""

from __future__ import annotations

import re

from .errors import bad_request

# Field labels the apiserver accepts per resource, mapped to where the value lives in the object.
FIELD_LABELS = {
    "pods": {"spec.nodeName": "spec.nodeName", "spec.restartPolicy": "spec.restartPolicy",
             "spec.schedulerName": "spec.schedulerName", "spec.serviceAccountName": "spec.serviceAccountName",
             "status.phase": "status.phase", "status.podIP": "status.podIP",
             "status.nominatedNodeName": "status.nominatedNodeName"},
    "events": {"involvedObject.kind": "involvedObject.kind", "involvedObject.namespace": "involvedObject.namespace",
               "involvedObject.name": "involvedObject.name", "involvedObject.uid": "involvedObject.uid",
               "involvedObject.apiVersion": "involvedObject.apiVersion",
               "involvedObject.resourceVersion": "involvedObject.resourceVersion",
               "involvedObject.fieldPath": "involvedObject.fieldPath", "reason": "reason", "type": "type",
               "source": "source.component", "reportingComponent": "reportingComponent"},
    "jobs": {"status.successful": "status.succeeded"},
    "secrets": {"type": "type"},
    "namespaces": {"status.phase": "status.phase"},
    "nodes": {"spec.unschedulable": "spec.unschedulable"},
}
COMMON_FIELDS = {"metadata.name": "metadata.name", "metadata.namespace": "metadata.namespace"}
TERM = re.compile(r"^\s*(!?)\s*([A-Za-z0-9./_-]+)\s*(?:(==|=|!=)\s*(.*?)|\s+(in|notin)\s*\((.*)\))?\s*$")


def split_terms(text: str) -> list[str]:
    """Split on commas that are not inside an `in (...)` list."""
    terms, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    return [term for term in terms + [current] if term.strip()]


def parse(text: str | None) -> list[tuple[str, str, set[str]]]:
    """Terms (key, operator, values); operators: in, notin, exists, !exists."""
    result = []
    for term in split_terms(text or ""):
        match = TERM.match(term)
        if not match:
            raise bad_request(f"unable to parse requirement: {term!r}")
        negated, key, op, value, set_op, set_values = match.groups()
        if op:
            result.append((key, "notin" if op == "!=" else "in", {value.strip()}))
        elif set_op:
            result.append((key, set_op, {v.strip() for v in set_values.split(",") if v.strip()}))
        else:
            result.append((key, "!exists" if negated else "exists", set()))
    return result


def matches(terms: list[tuple[str, str, set[str]]], values: dict[str, str]) -> bool:
    for key, op, wanted in terms:
        present = key in values
        if op == "exists" and not present or op == "!exists" and present:
            return False
        if op == "in" and values.get(key) not in wanted:
            return False
        if op == "notin" and present and values[key] in wanted:
            return False
    return True


def lookup(obj: dict, path: str) -> str:
    value: object = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool):
        return str(value).lower()
    return "" if value is None else str(value)


class Selector:
    """A parsed labelSelector + fieldSelector pair for one resource; `match(obj)` is what lists and watches use."""

    def __init__(self, plural: str, label_selector: str | None = None, field_selector: str | None = None):
        self.labels = parse(label_selector)
        self.fields = parse(field_selector)
        allowed = {**COMMON_FIELDS, **FIELD_LABELS.get(plural, {})}
        for key, op, _ in self.fields:
            if key not in allowed or op in ("exists", "!exists"):
                raise bad_request(f'field label not supported: {key}')
        self.paths = {key: allowed[key] for key, _, _ in self.fields}

    def match(self, obj: dict) -> bool:
        if not matches(self.labels, obj.get("metadata", {}).get("labels") or {}):
            return False
        values = {key: lookup(obj, path) for key, path in self.paths.items()}
        return matches(self.fields, values)
