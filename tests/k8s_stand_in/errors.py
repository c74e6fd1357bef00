"""Kubernetes-shaped errors: every failure leaves the server as a v1 Status, because clients parse those bodies."""

from __future__ import annotations

REASONS = {400: "BadRequest", 401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed", 409: "AlreadyExists",
           410: "Expired", 422: "Invalid", 500: "InternalError"}


def status_body(code: int, message: str, reason: str | None = None, details: dict | None = None) -> dict:
    """A failure Status exactly as kube-apiserver writes it (the client reads `reason` and `code`)."""
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason or REASONS.get(code, ""), "code": code}
    if details:
        body["details"] = details
    return body


def success_body(name: str, group: str, plural: str, uid: str) -> dict:
    """The Status returned when a DELETE removed the object at once."""
    details = {"name": name, "group": group, "kind": plural, "uid": uid}
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}


class ApiError(Exception):
    """Raised anywhere in the server; the app turns it into a Status response."""

    def __init__(self, code: int, message: str, reason: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.body = status_body(code, message, reason, details)


def not_found(qualified: str, name: str, group: str = "", plural: str = "") -> ApiError:
    details = {"name": name, "group": group, "kind": plural or qualified}
    return ApiError(404, f'{qualified} "{name}" not found', details=details)


def already_exists(qualified: str, name: str, group: str = "", plural: str = "") -> ApiError:
    details = {"name": name, "group": group, "kind": plural or qualified}
    return ApiError(409, f'{qualified} "{name}" already exists', details=details)


def invalid(kind_qualified: str, name: str, causes: list[tuple[str, str]], group: str = "", kind: str = "") -> ApiError:
    """422 with one cause per (field, message), like the apiserver's field validation."""
    text = ", ".join(f"{field}: {message}" for field, message in causes)
    details = {"name": name, "group": group, "kind": kind or kind_qualified,
               "causes": [{"reason": "FieldValueInvalid", "message": message, "field": field}
                          for field, message in causes]}
    return ApiError(422, f'{kind_qualified} "{name}" is invalid: {text}', details=details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)
