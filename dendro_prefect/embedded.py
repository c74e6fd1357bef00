"""The embedded stack, Prefect's side: a Prefect server (SQLite, or a PostgreSQL server of its own), work
pools and their deployments applied with `prefect deploy`, and Prefect workers, as child processes on
loopback and free ports, for the demo, the tests and the benches. Each is stopped by its PID when done.
`running_prefect` brings them up together; `embedded_controller` adds a compute resource to them."""

from __future__ import annotations

import asyncio
import fcntl
import importlib.metadata
import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import requests
import yaml

from .config import HOME_ENV

PREFECT = str(Path(sys.executable).with_name("prefect"))
# Migrated empty SQLite databases of Prefect servers, one per Prefect version (see migrated_sqlite).
SQLITE_TEMPLATES = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dendro-prefect"
# The clone: prefect.yaml and the flows its deployments name. Prefect runs the flows from here.
PROJECT_DIR = Path(__file__).resolve().parent.parent


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
                   stop_signal: int = signal.SIGTERM, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """A server as a child process with its output in `log_path`, yielded once `ready()` says it serves, and
    stopped by its PID at exit; if it exits or is not ready within `startup_timeout`, an error with its log's
    end."""
    log = open(log_path, "ab")
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
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
    command = [*as_postgres, _postgres_tool("postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
               "-k", str(sockets), "-c", "max_connections=200", "-c", "fsync=off"]

    def ready() -> bool:
        return subprocess.run([_postgres_tool("pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                              capture_output=True).returncode == 0

    with server_process(command, home / "postgres.log", ready, "PostgreSQL", startup_timeout):
        subprocess.run([_postgres_tool("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "prefect"],
                       capture_output=True)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"


REDIS_SERVER = "redis-server"  # Debian's package `redis-server`


@contextmanager
def redis_server(home: Path, startup_timeout: float = 30.0) -> Iterator[str]:
    """A Redis server of our own on a free 127.0.0.1 port, nothing kept on disk; yields its URL."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
               "--dir", str(home)]
    with server_process(command, home / "redis.log", lambda: _answers(port), "Redis", startup_timeout):
        yield f"redis://127.0.0.1:{port}/0"


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def prefect_server(home: Path, startup_timeout: float = 90.0, database_url: str | None = None,
                   port: int | None = None) -> Iterator[str]:
    """A Prefect server on a free 127.0.0.1 port (or `port`, to restart one) with its database under
    `home` (SQLite), or at `database_url` (PostgreSQL, for volume); yields the API URL.

    Where Debian's redis-server is installed, the server's queue of background tasks (docket) is kept in a
    Redis of its own: its default, an in-process emulation of Redis, polls its queue in Python four times a
    second, which costs an idle server a third of a core here (a sixth with Redis)."""
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = prefect_env(home)
    # The UI asks the API where its settings say, not where this server listens: without this it calls
    # port 4200 ("Can't connect to Server API"), or another Prefect server that happens to listen there.
    env["PREFECT_UI_API_URL"] = api_url
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    else:
        migrated_sqlite(home / "prefect.db")
    with ExitStack() as stack:
        if shutil.which(REDIS_SERVER):
            env["PREFECT_SERVER_DOCKET_URL"] = stack.enter_context(redis_server(home / "redis"))
        # SIGINT: the way `prefect server start` is stopped in a terminal.
        stack.enter_context(server_process(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], home / "server.log",
            lambda: _healthy(api_url), "the Prefect server", startup_timeout, signal.SIGINT, env))
        yield api_url


def migrated_sqlite(database: Path) -> None:
    """A Prefect server's new SQLite database starts as a copy of an empty one migrated once per Prefect version
    (kept in SQLITE_TEMPLATES): Alembic's migrations of an empty database are 8 s of the 13 s of CPU a first
    start costs. An existing database is left as it is."""
    if database.exists():
        return
    template = SQLITE_TEMPLATES / f"prefect-{importlib.metadata.version('prefect')}.db"
    if not template.exists():
        template.parent.mkdir(parents=True, exist_ok=True)
        with open(template.with_suffix(".lock"), "w") as lock, tempfile.TemporaryDirectory() as home:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be making it
            if not template.exists():
                env = dict(prefect_env(Path(home)),
                           PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db")
                subprocess.run([PREFECT, "server", "database", "upgrade", "-y"], env=env, check=True,
                               capture_output=True, timeout=300)
                partial = template.with_suffix(".tmp")
                partial.unlink(missing_ok=True)  # left by a process killed while making it
                _copy_sqlite(Path(home) / "prefect.db", partial)
                os.replace(partial, template)
    _copy_sqlite(template, database)


def _copy_sqlite(source: Path, target: Path) -> None:
    """SQLite's own backup: whole whatever the journal mode (Prefect's is WAL)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()


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
    """`prefect worker start` for one pool, querying every second: a worker restarted under its name takes up
    its predecessor's jobs at its first queries. `extra_args`: more options of
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


def prefect_cli(home: Path | None, api_url: str, *args: str, cwd: Path | None = None) -> str:
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
# The deployment of prefect.yaml that a pool of our own copies, by flow.
TEMPLATES = {"dendro-job": "local", "dendro-subscription": "subscription"}


@dataclass(frozen=True)
class Deployment:
    """A work pool of our own and a deployment of one of prefect.yaml's flows on it: a copy of the flow's
    deployment in prefect.yaml (TEMPLATES) with its own name (the pool's by default), pool and job variables."""

    pool: str
    worker_type: str = "dendro-local"
    job_variables: dict | None = None
    flow: str = "dendro-job"
    name: str | None = None

    @property
    def full_name(self) -> str:
        """`<flow>/<deployment>`, as the subscription flow's `deployments` and `prefect deployment run` name it."""
        return f"{self.flow}/{self.name or self.pool}"


def create_work_pools(api_url: str, pools: dict[str, str]) -> None:
    """Work pools (name → worker type) with their type's default job template, as `prefect work-pool create`
    makes them (through the API: the CLI's start-up would cost seconds a pool); an existing one is updated."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type

    async def create() -> None:
        async with get_client() as client:
            for name, worker_type in pools.items():
                template = await get_default_base_job_template_for_infrastructure_type(worker_type)
                await client.create_work_pool(WorkPoolCreate(name=name, type=worker_type, base_job_template=template),
                                              overwrite=True)

    with temporary_settings({PREFECT_API_URL: api_url}):
        asyncio.run(create())


def deploy_project(api_url: str, home: Path | None = None, project_dir: Path = PROJECT_DIR) -> None:
    """prefect.yaml's work pools, then `prefect deploy --all` from the project, as the README has a user do."""
    create_work_pools(api_url, WORK_POOLS)
    prefect_cli(home, api_url, "--no-prompt", "deploy", "--all", cwd=project_dir)


@contextmanager
def deploying(*deployments: Deployment, api_url: str | None = None, home: Path | None = None,
              project_dir: Path = PROJECT_DIR) -> Iterator[Callable[[], list[str]]]:
    """Pools of our own and their deployments, all in one `prefect deploy` (seconds a call), under way while
    the caller starts other things: yields a function that waits for it (raising if it failed) and returns the
    deployments' `<flow>/<name>`; a deploy still running at exit is stopped. The pools exist at once; the
    deployments come from a prefect.yaml generated from the project's (its deployments replaced by copies of
    TEMPLATES'), run from the project as `prefect deploy --all` there would be. Against `api_url` (by default
    this process's PREFECT_API_URL) with `home` as PREFECT_HOME (by default this process's)."""
    from prefect.settings import PREFECT_API_URL

    api_url = api_url or PREFECT_API_URL.value()
    project = yaml.safe_load((project_dir / "prefect.yaml").read_text())
    templates = {entry["name"]: entry for entry in project["deployments"]}
    entries = []
    for deployment in deployments:
        template = TEMPLATES[deployment.flow]
        entry = dict(templates[template], name=deployment.name or deployment.pool,
                     description=f"prefect.yaml's {template} on work pool {deployment.pool}")
        entry["work_pool"] = dict(entry.get("work_pool") or {}, name=deployment.pool,
                                  job_variables=deployment.job_variables or {})
        entries.append(entry)
    create_work_pools(api_url, {deployment.pool: deployment.worker_type for deployment in deployments})
    with tempfile.TemporaryDirectory(prefix="dendro-deploy-") as directory:
        prefect_file = Path(directory) / "prefect.yaml"
        prefect_file.write_text(yaml.safe_dump({**project, "deployments": entries}, sort_keys=False))
        command = [PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)]
        process = subprocess.Popen(command, cwd=project_dir, env=prefect_env(home, api_url), text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        def wait(timeout: float = 300.0) -> list[str]:
            output, _ = process.communicate(timeout=timeout)
            if process.returncode != 0:
                raise RuntimeError(f"{' '.join(command[1:])} failed:\n{output}")
            return [deployment.full_name for deployment in deployments]

        try:
            yield wait
        finally:
            stop_process(process, signal.SIGTERM, timeout=5)


def deploy(*deployments: Deployment, api_url: str | None = None, home: Path | None = None,
           project_dir: Path = PROJECT_DIR) -> list[str]:
    """`deploying`, waited for: pools of our own and their deployments; returns the deployments' `<flow>/<name>`."""
    with deploying(*deployments, api_url=api_url, home=home, project_dir=project_dir) as wait:
        return wait()


@dataclass
class Prefect:
    """A Prefect server of ours: its home (database, profiles, our workers' logs), its API URL, and the process
    worker of pool dendro-controller that runs subscription flows, once started (`controller_worker`)."""

    home: Path
    api_url: str
    controller_worker: subprocess.Popen | None = None

    def cli(self, *args: str, cwd: Path | None = None) -> str:
        return prefect_cli(self.home, self.api_url, *args, cwd=cwd)

    def worker(self, pool: str, worker_type: str, cwd: Path, log_name: str | None = None,
               env: dict[str, str] | None = None, name: str | None = None,
               extra_args: tuple[str, ...] = ()) -> ContextManager[subprocess.Popen]:
        """`prefect worker start` for `pool` (see prefect_worker); its log is `<home>/<pool>.log` by default."""
        return prefect_worker(self.home, self.api_url, pool, worker_type, cwd, log_name or f"{pool}.log", env,
                              name=name, extra_args=extra_args)

    def deploy(self, *deployments: Deployment) -> list[str]:
        return deploy(*deployments, api_url=self.api_url, home=self.home)

    def deploying(self, *deployments: Deployment) -> ContextManager[Callable[[], list[str]]]:
        return deploying(*deployments, api_url=self.api_url, home=self.home)


@contextmanager
def controller_worker(prefect: Prefect, log_name: str = "controller.log") -> Iterator[subprocess.Popen]:
    """The process worker of pool dendro-controller, in the project (the subscription deployment's pull step
    runs the flow from there), as `prefect.controller_worker` while it runs. Stop the subscription flow runs it
    runs first: stopping a process worker leaves its flow runs' processes running."""
    with prefect.worker("dendro-controller", "process", PROJECT_DIR, log_name) as worker:
        prefect.controller_worker = worker
        try:
            yield worker
        finally:
            prefect.controller_worker = None


@contextmanager
def running_prefect(home: Path, *, database: str = "sqlite", project: bool = True,
                    controller: bool = True) -> Iterator[Prefect]:
    """A Prefect server with its database under `home` (`sqlite`), or on a PostgreSQL server of its own under
    `home/postgres` (`postgres`, for volume); with prefect.yaml's work pools and deployments (`project`) and
    the process worker of pool dendro-controller (`controller`). Within, this process's Prefect client talks
    to it (PREFECT_API_URL)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with ExitStack() as stack:
        database_url = stack.enter_context(postgres_database(home / "postgres")) if database == "postgres" else None
        prefect = Prefect(home, stack.enter_context(prefect_server(home, database_url=database_url)))
        stack.enter_context(temporary_settings({PREFECT_API_URL: prefect.api_url}))
        if project:
            deploy_project(prefect.api_url, prefect.home)
        if controller:
            stack.enter_context(controller_worker(prefect))
        yield prefect
