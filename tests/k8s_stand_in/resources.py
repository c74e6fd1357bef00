"""The resource types this stand-in serves, with the names the apiserver uses for them in paths, lists and errors."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: str
    group: str
    namespaced: bool
    verbs: tuple[str, ...]
    singular: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/v1" if self.group else "v1"

    @property
    def qualified(self) -> str:
        """How error messages name the resource: `jobs.batch`, `pods`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        """How validation errors name the kind: `Job.batch`, `Pod`."""
        return f"{self.kind}.{self.group}" if self.group else self.kind


READ = ("get", "list", "watch")
RBAC = "rbac.authorization.k8s.io"
RESOURCES = {
    "namespaces": Resource("namespaces", "Namespace", "", False, ("create",) + READ, "namespace"),
    "nodes": Resource("nodes", "Node", "", False, READ, "node"),
    "secrets": Resource("secrets", "Secret", "", True, ("create", "delete") + READ, "secret"),
    "pods": Resource("pods", "Pod", "", True, ("create", "delete") + READ, "pod"),
    "events": Resource("events", "Event", "", True, ("create",) + READ, "event"),
    "jobs": Resource("jobs", "Job", "batch", True, ("create", "delete") + READ, "job"),
    # Stored only (no controller acts on them): what deployments/kubernetes/ applies to run the worker in a cluster.
    "serviceaccounts": Resource("serviceaccounts", "ServiceAccount", "", True, ("create", "delete") + READ,
                                "serviceaccount"),
    "deployments": Resource("deployments", "Deployment", "apps", True, ("create", "delete") + READ, "deployment"),
    "roles": Resource("roles", "Role", RBAC, True, ("create", "delete") + READ, "role"),
    "rolebindings": Resource("rolebindings", "RoleBinding", RBAC, True, ("create", "delete") + READ, "rolebinding"),
    "clusterroles": Resource("clusterroles", "ClusterRole", RBAC, False, ("create", "delete") + READ, "clusterrole"),
    "clusterrolebindings": Resource("clusterrolebindings", "ClusterRoleBinding", RBAC, False,
                                    ("create", "delete") + READ, "clusterrolebinding"),
}


def resource(group: str, plural: str) -> Resource | None:
    found = RESOURCES.get(plural)
    return found if found and found.group == group else None
