"""The embedded default: a Prefect server on SQLite and Prefect workers as child processes, on
loopback and free ports, for the demo and the tests. Each is stopped by its PID when done."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import requests

from .config import HOME_ENV

PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    """The environment of our Prefect processes: their own home (database, profiles) and no analytics."""
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_CLI_PROMPT="false", PREFECT_SERVER_LOGGING_LEVEL="WARNING")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def stop_process(process: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 20.0) -> None:
    """SIGINT first: `prefect worker start` ignores SIGTERM for minutes but stops on SIGINT."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


POSTGRES_BIN = Path("/usr/lib/postgresql")


def _postgres_tool(name: str) -> str:
    """Debian's PostgreSQL server programs are not on PATH: take the newest installed version's."""
    versions = sorted(POSTGRES_BIN.glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if not versions:
        raise RuntimeError("PostgreSQL is not installed (Debian package `postgresql`)")
    return str(versions[-1] / name)


@contextmanager
def postgres_database(home: Path, startup_timeout: float = 60.0) -> Iterator[str]:
    """A PostgreSQL server of our own on a free 127.0.0.1 port, data under `home` (run as user
    postgres, trust authentication on loopback); yields Prefect's database URL for it."""
    data, sockets = home / "pgdata", home / "pgsocket"
    home.mkdir(parents=True, exist_ok=True)
    sockets.mkdir(exist_ok=True)
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
        shutil.chown(sockets, "postgres")
        for parent in home.resolve().parents:  # let postgres through our own (temporary) directories
            if parent.stat().st_uid == 0 and not parent.stat().st_mode & stat.S_IXOTH:
                parent.chmod(parent.stat().st_mode | stat.S_IXOTH)
    if not data.exists():
        subprocess.run([*as_postgres, _postgres_tool("initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"],
                       check=True, capture_output=True)
    port = free_port()
    log = open(home / "postgres.log", "ab")
    process = subprocess.Popen(
        [*as_postgres, _postgres_tool("postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
         "-k", str(sockets), "-c", "max_connections=200", "-c", "fsync=off"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + startup_timeout
        while subprocess.run([_postgres_tool("pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start; see {home / 'postgres.log'}")
            time.sleep(0.1)
        subprocess.run([_postgres_tool("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "prefect"],
                       capture_output=True)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    finally:
        stop_process(process, signal.SIGTERM)
        log.close()


@contextmanager
def prefect_server(home: Path, startup_timeout: float = 90.0, database_url: str | None = None,
                   port: int | None = None) -> Iterator[str]:
    """A Prefect server on a free 127.0.0.1 port (or `port`, to restart one) with its database under
    `home` (SQLite), or at `database_url` (PostgreSQL, for volume); yields the API URL."""
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = prefect_env(home)
    # The UI asks the API where its settings say, not where this server listens: without this it calls
    # port 4200 ("Can't connect to Server API"), or another Prefect server that happens to listen there.
    env["PREFECT_UI_API_URL"] = api_url
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    log = open(home / "server.log", "ab")
    process = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + startup_timeout
        while not _healthy(api_url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (home / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the Prefect server did not start; its log ends with:\n{tail}")
            time.sleep(0.2)
        yield api_url
    finally:
        stop_process(process)
        log.close()


def _healthy(api_url: str) -> bool:
    """Our server answers its health check; another one on the port would not have been picked."""
    try:
        return requests.get(f"{api_url}/health", timeout=2).ok
    except requests.RequestException:
        return False


@contextmanager
def prefect_worker(
    home: Path, api_url: str, pool: str, worker_type: str, cwd: Path, log_name: str, extra_env: dict[str, str] | None = None,
    name: str | None = None, extra_args: tuple[str, ...] = (),
) -> Iterator[subprocess.Popen]:
    """`prefect worker start` for one pool, querying every second so runs start promptly. A worker
    restarted under its name takes up its predecessor's jobs at once. `extra_args`: more options of
    `prefect worker start` (e.g. `--with-healthcheck`). The demo, the tests and the benches keep one
    compute resource per directory: a worker started here reads the configuration in its `cwd`."""
    env = prefect_env(home, api_url)
    env.update(PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5")
    env[HOME_ENV] = str(cwd)
    env.update(extra_env or {})
    log = open(home / log_name, "ab")
    process = subprocess.Popen([PREFECT, "worker", "start", "--pool", pool, "--type", worker_type,
                                *(["--name", name] if name else []), *extra_args],
                               cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop_process(process)
        log.close()


def prefect_cli(home: Path, api_url: str, *args: str, cwd: Path | None = None) -> str:
    """Run a `prefect` command against our server; its output, or an error with it."""
    result = subprocess.run([PREFECT, *args], env=prefect_env(home, api_url), cwd=cwd, capture_output=True,
                            text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


# The work pools that prefect.yaml's deployments name, with their worker types.
WORK_POOLS = {
    "dendro-controller": "process",
    "local": "dendro-local",
    "slurm": "dendro-slurm",
    "aws-batch": "dendro-aws-batch",
    "kubernetes": "dendro-kubernetes",
}


def deploy_all(home: Path, api_url: str, project_dir: Path) -> None:
    """Create the work pools of prefect.yaml, then `prefect deploy --all` from `project_dir`."""
    for pool, worker_type in WORK_POOLS.items():
        prefect_cli(home, api_url, "work-pool", "create", pool, "--type", worker_type)
    prefect_cli(home, api_url, "deploy", "--all", cwd=project_dir)
