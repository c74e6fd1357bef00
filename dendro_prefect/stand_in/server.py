"""Run the stand-in: bind a loopback port (0 = any free one), then announce where it listens.

`<data dir>/central.json` is written only once the socket is bound, so whoever starts the
stand-in waits for that file instead of sleeping; it holds the URL and the admin token.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

import uvicorn

from .announce import announce_when_listening
from .app import create_app
from .blobs import BlobStore
from .pubsub_hub import PubSubHub
from .service import Central
from .store import Store

CENTRAL_FILE = "central.json"
SUBSCRIBE_KEY = "sub-c-dendro-standin"


def _private_file(path: Path, make: callable) -> str:
    """Read a secret kept in the data directory, creating it (mode 0600) the first time."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(make())
    return path.read_text().strip()


def build_central(data_dir: Path, mock_pubsub: bool = False) -> Central:
    data_dir.mkdir(parents=True, exist_ok=True)
    return Central(
        store=Store(data_dir / "central.sqlite"),
        blobs=BlobStore(data_dir / "blobs", _private_file(data_dir / "blob-secret", lambda: secrets.token_hex(32)).encode()),
        hub=PubSubHub(SUBSCRIBE_KEY),
        admin_token=_private_file(data_dir / "admin-token", lambda: secrets.token_hex(16)),
        mock_pubsub=mock_pubsub,
    )


def serve(data_dir: Path, host: str = "127.0.0.1", port: int = 0, mock_pubsub: bool = False) -> None:
    central = build_central(data_dir, mock_pubsub)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://{bound_host}:{bound_port}"
    announcement = data_dir / CENTRAL_FILE
    server = uvicorn.Server(uvicorn.Config(create_app(central), log_level="warning", timeout_graceful_shutdown=2))
    announce_when_listening(server, announcement, {"url": url, "adminToken": central.admin_token, "pid": os.getpid()},
                            f"Dendro central stand-in listening on {url} (data in {data_dir})")

    original_shutdown = server.shutdown

    async def shutdown(sockets=None):
        """Withdraw the announcement here: uvicorn re-raises SIGTERM after shutdown, so no `finally` runs."""
        announcement.unlink(missing_ok=True)
        await original_shutdown(sockets=sockets)

    server.shutdown = shutdown
    server.run(sockets=[sock])
