"""Start the stand-in as a child process and stop it again: for the demo and the tests."""

from __future__ import annotations

import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..child_processes import stop_process
from .admin_client import AdminError, StandInAdmin
from .server import CENTRAL_FILE


@contextmanager
def running_stand_in(data_dir: Path, *, mock_pubsub: bool = False, startup_timeout: float = 30.0) -> Iterator[StandInAdmin]:
    """Yield an admin client of a fresh stand-in on a free loopback port; stop it (by its PID) after."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / CENTRAL_FILE).unlink(missing_ok=True)
    command = [sys.executable, "-m", "dendro_prefect.cli", "stand-in", "serve", "--data-dir", str(data_dir)]
    if mock_pubsub:
        command.append("--mock-pubsub")
    log = open(data_dir / "central.log", "ab")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            admin = StandInAdmin.from_data_dir(data_dir, wait=startup_timeout)
        except AdminError:
            tail = (data_dir / "central.log").read_text(errors="replace")[-2000:]
            raise AdminError(f"the stand-in central did not start; its log ends with:\n{tail}") from None
        yield admin
    finally:
        if process.poll() is not None:  # what a caller's "central unreachable" then means
            tail = (data_dir / "central.log").read_text(errors="replace")[-2000:]
            print(f"the stand-in central (pid {process.pid}) had exited with code {process.returncode}; its log "
                  f"ends with:\n{tail}", file=sys.stderr)
        stop_process(process, signal.SIGTERM, timeout=10)
        log.close()
