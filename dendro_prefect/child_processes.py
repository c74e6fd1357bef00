"""The embedded stack's child processes: Prefect's CLI with an environment of our own, and servers on free
127.0.0.1 ports, each stopped by its PID when done."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prefect_env(home: Path | None, api_url: str | None = None) -> dict[str, str]:
    """The environment of our Prefect processes: their own home (database, profiles; None: this process's) and
    no analytics."""
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_CLI_PROMPT="false",
               PREFECT_SERVER_LOGGING_LEVEL="WARNING")
    if home:
        env["PREFECT_HOME"] = str(home)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def as_user(user: str | None) -> dict:
    """Popen's arguments that run a child as `user` with that user's group alone (none: as we are). The child
    is the program itself, not a `runuser` in between that would not pass our signals on."""
    return {} if user is None else {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def stop_process(process: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 20.0) -> None:
    """SIGINT first: `prefect worker start` ignores SIGTERM for minutes but stops on SIGINT."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def server_process(argv: list[str], log_path: Path, ready: Callable[[], bool], what: str, startup_timeout: float,
                   stop_signal: int = signal.SIGTERM, env: dict[str, str] | None = None,
                   user: str | None = None) -> Iterator[subprocess.Popen]:
    """A server as a child process (run as `user`, when given, by a root caller) with its output in `log_path`,
    yielded once `ready()` says it serves, and stopped by its PID at exit; if it exits or is not ready within
    `startup_timeout`, an error with its log's end."""
    log = open(log_path, "ab")
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, **as_user(user))
    try:
        deadline = time.monotonic() + startup_timeout
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{what} did not start; its log ends with:\n{tail}")
            time.sleep(0.1)
        yield process
    finally:
        stop_process(process, stop_signal)
        log.close()
