"""The HTTP application: bearer-token authentication on everything but health checks (401 Status otherwise),
Kubernetes Status bodies for every error, and the control loop running for the server's lifetime."""

from __future__ import annotations

import asyncio
import hmac
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from . import admin, discovery, logs, routes
from .cluster import Cluster
from .errors import ApiError, status_body
from .options import Options

OPEN_PATHS = ("/healthz", "/livez", "/readyz")


class BearerAuth:
    """Pure ASGI middleware (so that streaming responses pass untouched): no valid token, no answer but 401."""

    def __init__(self, app, token: str) -> None:
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await JSONResponse(status_body(401, "Unauthorized"), 401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(options: Options) -> FastAPI:
    cluster = Cluster(options)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        loop = asyncio.create_task(cluster.run())
        try:
            yield
        finally:
            loop.cancel()
            cluster.shutdown()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.cluster = cluster
    app.add_middleware(BearerAuth, token=options.token)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body, error.code)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        message = "the server could not find the requested resource" if error.status_code == 404 else str(error.detail)
        return JSONResponse(status_body(error.status_code, message), error.status_code)

    @app.exception_handler(RequestValidationError)
    async def request_error(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_body(400, str(error.errors())), 400)

    for module in (discovery.open_router, discovery.router, admin.router, logs.router, routes.router):
        app.include_router(module)
    return app
