"""The resource verbs over HTTP: list (or watch), get, create, delete, for core v1 (/api/v1) and batch/v1
(/apis/batch/v1), namespaced and across namespaces. Lists carry metadata.resourceVersion; items omit kind and
apiVersion as in a real list."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from .cluster import Cluster
from .errors import ApiError, bad_request
from .garbage_collector import ORPHAN_WARNING
from .resources import Resource, resource
from .selectors import Selector
from .watching import start_version, watch_stream

router = APIRouter()
TRUE = ("true", "1", "True")


def target(request: Request, verb: str, namespaced_path: bool) -> Resource:
    res = resource(request.path_params.get("group", ""), request.path_params["plural"])
    if res is None or namespaced_path and not res.namespaced:
        raise ApiError(404, "the server could not find the requested resource")
    if verb not in res.verbs:
        raise ApiError(405, f'the server does not allow this method on the requested resource ({res.qualified})')
    return res


def cluster_of(request: Request) -> Cluster:
    return request.app.state.cluster


def list_or_watch(request: Request, res: Resource, namespace: str | None) -> Response:
    query = request.query_params
    store = cluster_of(request).store
    selector = Selector(res.plural, query.get("labelSelector"), query.get("fieldSelector"))
    if query.get("watch") in TRUE:
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        stream = watch_stream(store, res, namespace, selector, start_version(query.get("resourceVersion")), timeout)
        return StreamingResponse(stream, media_type="application/json")
    items = store.list(res.plural, namespace, selector.match)
    for item in items:
        item.pop("kind", None)
        item.pop("apiVersion", None)
    return JSONResponse({"kind": f"{res.kind}List", "apiVersion": res.api_version,
                         "metadata": {"resourceVersion": str(store.rv)}, "items": items})


async def json_body(request: Request) -> object:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError as error:
        raise bad_request(f"the body of the request was in an unknown format: {error}") from None


@router.get("/api/v1/{plural}")
@router.get("/apis/{group}/v1/{plural}")
async def list_all(request: Request) -> Response:
    res = target(request, "list", False)
    return list_or_watch(request, res, None)


@router.get("/api/v1/namespaces/{namespace}/{plural}")
@router.get("/apis/{group}/v1/namespaces/{namespace}/{plural}")
async def list_namespaced(request: Request, namespace: str) -> Response:
    return list_or_watch(request, target(request, "list", True), namespace)


@router.post("/api/v1/{plural}")
@router.post("/apis/{group}/v1/{plural}")
async def create_cluster_scoped(request: Request) -> Response:
    res = target(request, "create", False)
    if res.namespaced:
        raise ApiError(405, f"the server does not allow this method on the requested resource ({res.qualified})")
    return JSONResponse(cluster_of(request).create_object(res.plural, None, await json_body(request)), 201)


@router.post("/api/v1/namespaces/{namespace}/{plural}")
@router.post("/apis/{group}/v1/namespaces/{namespace}/{plural}")
async def create_namespaced(request: Request, namespace: str) -> Response:
    res = target(request, "create", True)
    return JSONResponse(cluster_of(request).create_object(res.plural, namespace, await json_body(request)), 201)


@router.get("/api/v1/{plural}/{name}")
@router.get("/apis/{group}/v1/{plural}/{name}")
async def get_cluster_scoped(request: Request, name: str) -> Response:
    res = target(request, "get", False)
    if res.namespaced:
        raise ApiError(404, "the server could not find the requested resource")
    return JSONResponse(cluster_of(request).store.require(res.plural, "", name))


@router.get("/api/v1/namespaces/{namespace}/{plural}/{name}")
@router.get("/apis/{group}/v1/namespaces/{namespace}/{plural}/{name}")
@router.get("/api/v1/namespaces/{namespace}/{plural}/{name}/status")
@router.get("/apis/{group}/v1/namespaces/{namespace}/{plural}/{name}/status")
async def get_namespaced(request: Request, namespace: str, name: str) -> Response:
    res = target(request, "get", True)
    return JSONResponse(cluster_of(request).store.require(res.plural, namespace, name))


@router.delete("/api/v1/namespaces/{namespace}/{plural}/{name}")
@router.delete("/apis/{group}/v1/namespaces/{namespace}/{plural}/{name}")
async def delete_namespaced(request: Request, namespace: str, name: str) -> Response:
    res = target(request, "delete", True)
    options = await json_body(request)
    if not isinstance(options, dict):
        raise bad_request("DeleteOptions must be an object")
    query = request.query_params
    policy = options.get("propagationPolicy") or query.get("propagationPolicy")
    if policy is None and (options.get("orphanDependents") or query.get("orphanDependents") in TRUE):
        policy = "Orphan"
    grace = options.get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
    body = cluster_of(request).gc.delete(res.plural, namespace, name, policy, None if grace is None else int(grace))
    headers = {"Warning": ORPHAN_WARNING} if res.plural == "jobs" and policy is None else None
    return JSONResponse(body, 200, headers=headers)
