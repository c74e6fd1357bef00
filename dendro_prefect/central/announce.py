"""How a central started as a child process says where it listens: a file in its data directory (mode 0600,
written whole once the server listens, withdrawn when it stops) that its parent waits for. For the stand-in
(server.py) and the real central of the tests (tests/real_central/serve.py, which imports only the standard
library from here)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def announce_while_serving(server: Any, announcement: Path, info: dict, message: str) -> None:
    """Make `server` (a uvicorn.Server) write `info` and its PID to `announcement` and print `message` once it
    listens, and remove the file when it shuts down."""
    original_startup, original_shutdown = server.startup, server.shutdown

    async def startup(sockets=None):
        await original_startup(sockets=sockets)
        temporary = announcement.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({**info, "pid": os.getpid()}, handle)
        os.replace(temporary, announcement)
        print(message, flush=True)

    async def shutdown(sockets=None):
        """Here, not in a `finally`: uvicorn re-raises SIGTERM after its shutdown, so no `finally` runs."""
        announcement.unlink(missing_ok=True)
        await original_shutdown(sockets=sockets)

    server.startup, server.shutdown = startup, shutdown
