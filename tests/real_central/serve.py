"""The real Dendro 0.2.17 central on loopback: the PyPI package's own FastAPI routers (`dendro.api_helpers`,
assembled under the prefixes of the dendro repository's api/index.py) under uvicorn. Run with the python of
.venv-central (`dendro[api]==0.2.17`, mongomock-motor, uvicorn; scripts/test.sh makes it):

    .venv-central/bin/python tests/real_central/serve.py --data-dir DIR

Once it listens, DIR/real-central.json (mode 0600) holds its URL and a GUI access token. Around the routers,
set through the central's own settings (environment variables it reads on every call):
- VITE_PUBNUB_SUBSCRIBE_KEY, PUBNUB_PUBLISH_KEY: the keys of the PubNub-compatible hub of our stand-in
  (dendro_prefect/stand_in/pubsub_hub.py, which needs only fastapi), mounted in this process: the central publishes
  to its REST publish route, and a controller's pubnub SDK subscribes to it (`pubsub_origin` in its
  configuration file; the central itself never names an origin).
- OUTPUT_BUCKET_BASE_URL, FSBUCKET_SECRET_KEY: the central's own "fsbucket" output bucket, signed PUT URLs
  and plain GET URLs, served by the minimal loopback fsbucket below (`/fsbucket`).
- MONGO_URI: any value (the routers assert that it is set); see patch 1.

The patches, the only ones (nothing else of the package is replaced):
1. `motor.motor_asyncio.AsyncIOMotorClient` is mongomock-motor's `AsyncMongoMockClient`: the MongoDB client
   the routers get (clients/_get_mongo_client.py imports motor's client on its first call) is an in-memory
   one. Every query is still the routers' own; mongomock runs them.
2. `aiohttp` as clients/pubsub.py sees it opens sessions whose requests go to this process instead of
   PubNub's host: `publish_pubsub_message` writes that host into its URL; the path, the quoting of the
   message, the keys and the check of the answer stay its own. No other module's aiohttp is touched: the
   central's HEAD requests for output sizes go to the loopback fsbucket as they are.

Not patched, but worth knowing: GUI routes authenticate GitHub access tokens; the package's own mock tokens
(`_create_mock_github_access_token`, `mock:<uuid>`, user `github|<uuid>`, made for its tests) are accepted
without asking GitHub, so this server makes one and hands it out as the GUI user's token.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the stand-in's hub and blob storage (fastapi and the standard library only)

from dendro_prefect.stand_in.announce import announce_when_listening  # noqa: E402
from dendro_prefect.stand_in.blobs import BlobStore  # noqa: E402
from dendro_prefect.stand_in.pubsub_hub import PubSubHub  # noqa: E402

ANNOUNCEMENT = "real-central.json"
SUBSCRIBE_KEY = "sub-c-dendro-real-central"
PUBLISH_KEY = "pub-c-dendro-real-central"
FSBUCKET_PREFIX = "/fsbucket"


def use_in_memory_mongodb() -> None:
    """Patch 1 (see the module's docstring)."""
    import motor.motor_asyncio
    from mongomock_motor import AsyncMongoMockClient

    motor.motor_asyncio.AsyncIOMotorClient = AsyncMongoMockClient


class _LoopbackSession:
    """An aiohttp session whose requests go to `origin` (scheme and host of each URL replaced)."""

    def __init__(self, origin: str, session: aiohttp.ClientSession) -> None:
        self._origin = urlsplit(origin)
        self._session = session

    def _to_loopback(self, url: str) -> str:
        parts = urlsplit(url)
        return urlunsplit((self._origin.scheme, self._origin.netloc, parts.path, parts.query, parts.fragment))

    def get(self, url: str, **kwargs):
        return self._session.get(self._to_loopback(url), **kwargs)

    async def __aenter__(self) -> "_LoopbackSession":
        await self._session.__aenter__()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._session.__aexit__(*exc_info)


class _AiohttpToLoopback:
    """Patch 2: `aiohttp` as the central's PubSub publish sees it."""

    def __init__(self, origin: str) -> None:
        self._origin = origin

    def ClientSession(self, *args, **kwargs) -> _LoopbackSession:  # noqa: N802 (aiohttp's name)
        return _LoopbackSession(self._origin, aiohttp.ClientSession(*args, **kwargs))


def publish_to_loopback(origin: str) -> None:
    import dendro.api_helpers.clients.pubsub as pubsub

    pubsub.aiohttp = _AiohttpToLoopback(origin)


def fsbucket_routes(store: BlobStore, secret: str) -> APIRouter:
    """A minimal fsbucket: PUT with the signature the central signs its upload URLs with (its own
    `_create_signature`), GET and HEAD unsigned, as the central's download URLs are."""
    from dendro.api_helpers.services.processor._get_fsbucket_signed_upload_url import _create_signature

    router = APIRouter(prefix=FSBUCKET_PREFIX)

    @router.put("/{key:path}")
    async def put(key: str, signature: str, expires: int, request: Request) -> dict:
        import time

        if expires < time.time():
            raise HTTPException(403, "URL expired")
        if not secrets.compare_digest(_create_signature(secret_key=secret, object_key=key, expires=expires,
                                                        method="PUT"), signature):
            raise HTTPException(403, "bad signature")
        with store.writer(key) as handle:
            async for chunk in request.stream():
                handle.write(chunk)
        return {"success": True}

    @router.api_route("/{key:path}", methods=["GET", "HEAD"])
    def get(key: str) -> FileResponse:
        path = store.path(key)
        if not path.is_file():
            raise HTTPException(404, "no such object")
        return FileResponse(path, media_type="application/octet-stream")

    return router


def create_app(hub: PubSubHub, store: BlobStore, fsbucket_secret: str) -> FastAPI:
    # Imported only now: the routers' modules are the package's as they are, the patches above apply to the
    # modules they import, whenever those are called.
    from dendro.api_helpers.routers.client.router import router as client_router
    from dendro.api_helpers.routers.compute_resource.router import router as compute_resource_router
    from dendro.api_helpers.routers.gui.router import router as gui_router
    from dendro.api_helpers.routers.processor.router import router as processor_router

    app = FastAPI(title="Dendro central 0.2.17 (the PyPI package's routers, on loopback)")
    app.include_router(processor_router, prefix="/api/processor", tags=["Processor"])
    app.include_router(compute_resource_router, prefix="/api/compute_resource", tags=["Compute Resource"])
    app.include_router(client_router, prefix="/api/client", tags=["Client"])
    app.include_router(gui_router, prefix="/api/gui", tags=["GUI"])
    app.include_router(hub.router())
    app.include_router(fsbucket_routes(store, fsbucket_secret))
    return app


def serve(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = "http://127.0.0.1:%d" % sock.getsockname()[1]
    fsbucket_secret = secrets.token_hex(16)
    os.environ.update({
        "MONGO_URI": "mongodb://in-memory",
        "VITE_PUBNUB_SUBSCRIBE_KEY": SUBSCRIBE_KEY,
        "PUBNUB_PUBLISH_KEY": PUBLISH_KEY,
        "OUTPUT_BUCKET_BASE_URL": url + FSBUCKET_PREFIX,
        "FSBUCKET_SECRET_KEY": fsbucket_secret,
    })
    use_in_memory_mongodb()
    publish_to_loopback(url)
    from dendro.api_helpers.routers.gui._authenticate_gui_request import _create_mock_github_access_token

    token = _create_mock_github_access_token()
    app = create_app(PubSubHub(SUBSCRIBE_KEY), BlobStore(data_dir / "fsbucket", fsbucket_secret.encode()),
                     fsbucket_secret)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    announce_when_listening(server, data_dir / ANNOUNCEMENT, {"url": url, "githubAccessToken": token,
                                                              "pid": os.getpid()},
                            f"the real Dendro central (0.2.17) listens on {url}")
    server.run(sockets=[sock])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    serve(parser.parse_args().data_dir)
