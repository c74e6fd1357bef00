"""Test-only controls under /stand-in/ (no Kubernetes equivalent): evict a pod, compact the watch history, and look
at raw state (objects, including ones being deleted, and live processes) to check that nothing is orphaned."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .errors import ApiError
from .process import scan
from .resources import RESOURCES

router = APIRouter(prefix="/stand-in")


@router.post("/namespaces/{namespace}/pods/{name}/evict")
async def evict(request: Request, namespace: str, name: str) -> JSONResponse:
    cluster = request.app.state.cluster
    return JSONResponse(cluster.kubelet.evict(cluster.store.require("pods", namespace, name)))


@router.post("/compact")
async def compact(request: Request) -> JSONResponse:
    store = request.app.state.cluster.store
    store.compact()
    return JSONResponse({"resourceVersion": str(store.rv)})


@router.get("/namespaces/{namespace}/{plural}")
async def objects(request: Request, namespace: str, plural: str) -> JSONResponse:
    if plural not in RESOURCES or not RESOURCES[plural].namespaced:
        raise ApiError(404, f"no such resource: {plural}")
    return JSONResponse(request.app.state.cluster.store.list(plural, namespace))


@router.get("/processes")
async def processes(request: Request) -> JSONResponse:
    pid_dir = request.app.state.cluster.kubelet.pid_dir
    pgids = {int(path.name) for path in pid_dir.glob("*") if path.name.isdigit()} if pid_dir.is_dir() else set()
    pgids |= request.app.state.cluster.kubelet.pgids()
    return JSONResponse(sorted(pid for pids, _ in scan(pgids).values() for pid in pids))
