"""How a central started as a child process tells its starter where it listens: once uvicorn listens, a
JSON file (mode 0600: it holds a token) is written atomically. Standard library and uvicorn only, so the
real central's own venv uses it too (tests/real_central/serve.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import uvicorn


def announce_when_listening(server: uvicorn.Server, announcement: Path, document: dict, message: str) -> None:
    """Write `document` to `announcement` and print `message` once `server` listens."""
    announcement.unlink(missing_ok=True)
    original_startup = server.startup

    async def startup(sockets=None):
        await original_startup(sockets=sockets)
        temporary = announcement.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle)
        os.replace(temporary, announcement)
        print(message, flush=True)

    server.startup = startup
