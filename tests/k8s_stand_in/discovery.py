"""Discovery and health: /version, /api, /apis and the resource lists, enough for the official client's
VersionApi, CoreApi, ApisApi and get_api_resources (the typed APIs themselves never ask)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from .node import KUBE_VERSION
from .resources import RESOURCES

router = APIRouter()
open_router = APIRouter()
BATCH = {"name": "batch", "versions": [{"groupVersion": "batch/v1", "version": "v1"}],
         "preferredVersion": {"groupVersion": "batch/v1", "version": "v1"}}


@open_router.get("/healthz")
@open_router.get("/livez")
@open_router.get("/readyz")
async def health() -> PlainTextResponse:
    return PlainTextResponse("ok")


@router.get("/version")
async def version() -> JSONResponse:
    return JSONResponse({"major": "1", "minor": "33", "emulationMajor": "1", "emulationMinor": "33",
                         "minCompatibilityMajor": "1", "minCompatibilityMinor": "32", "gitVersion": KUBE_VERSION,
                         "gitCommit": "0" * 40, "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                         "goVersion": "go1.24.0", "compiler": "gc", "platform": "linux/amd64"})


@router.get("/api")
async def core_versions(request: Request) -> JSONResponse:
    address = f"{request.url.hostname}:{request.url.port}"
    return JSONResponse({"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}]})


@router.get("/apis")
async def groups() -> JSONResponse:
    return JSONResponse({"kind": "APIGroupList", "apiVersion": "v1", "groups": [BATCH]})


@router.get("/apis/batch")
async def batch_group() -> JSONResponse:
    return JSONResponse({"kind": "APIGroup", "apiVersion": "v1", **BATCH})


def resource_list(group: str) -> dict:
    resources = []
    for res in RESOURCES.values():
        if res.group != group:
            continue
        resources.append({"name": res.plural, "singularName": res.singular, "namespaced": res.namespaced,
                          "kind": res.kind, "verbs": list(res.verbs)})
        if res.plural in ("pods", "jobs"):
            resources.append({"name": f"{res.plural}/status", "singularName": "", "namespaced": True,
                              "kind": res.kind, "verbs": ["get"]})
        if res.plural == "pods":
            resources.append({"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod",
                              "verbs": ["get"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/v1" if group else "v1",
            "resources": resources}


@router.get("/api/v1")
async def core_resources() -> JSONResponse:
    return JSONResponse(resource_list(""))


@router.get("/apis/batch/v1")
async def batch_resources() -> JSONResponse:
    return JSONResponse(resource_list("batch"))
