"""The embedded stack, Prefect's side: a Prefect server (on a PostgreSQL server of its own, or SQLite), work
pools and their deployments applied with `prefect deploy`, and Prefect workers, as child processes on
loopback and free ports, for the demo, the tests and the benches. Each is stopped by its PID when done.
`running_prefect` brings them up together; `embedded_controller` adds a compute resource to them."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator
from urllib.parse import urlsplit

import requests
import yaml

from .child_processes import PREFECT, free_port, prefect_env, server_process, stop_process
from .config import HOME_ENV
from .prefect_database import migrated_sqlite, postgres_database

# The clone: prefect.yaml and the flows its deployments name. Prefect runs the flows from here.
PROJECT_DIR = Path(__file__).resolve().parent.parent
REDIS_SERVER = "redis-server"  # Debian's package `redis-server`
PORT_TRIES = 3


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
                   port: int | None = None, api_processes: int = 1) -> Iterator[str]:
    """A Prefect server on a free 127.0.0.1 port (or `port`, to restart one) with its database at
    `database_url` (see running_prefect), or under `home` (SQLite); yields the API URL.

    Where Debian's redis-server is installed, the server's queue of background tasks (docket) is kept in a
    Redis of its own: its default, an in-process emulation of Redis, polls its queue in Python four times a
    second, which costs an idle server a third of a core here (a sixth with Redis).

    `api_processes` > 1 is Prefect's own scale-out: that many API processes (`prefect server start --workers`)
    behind one port, and the services (scheduler, event triggers, late runs, ...) in a process of their own
    (`prefect server services start`); their events, caches and concurrency leases go through Redis
    (prefect-redis, extra `scale-out`), which it requires, as it requires PostgreSQL."""
    if api_processes > 1 and not database_url:
        raise ValueError("a Prefect server with several API processes needs PostgreSQL, not SQLite")
    if api_processes > 1 and not shutil.which(REDIS_SERVER):
        raise RuntimeError(f"a Prefect server with several API processes needs Redis: {REDIS_SERVER} is not installed "
                           "(Debian's package redis-server)")
    home.mkdir(mode=0o700, parents=True, exist_ok=True)  # its database holds the blocks' credentials
    env = prefect_env(home)
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    else:
        migrated_sqlite(home / "prefect.db")
    with ExitStack() as stack:
        if shutil.which(REDIS_SERVER):
            redis_url = stack.enter_context(redis_server(home / "redis"))
            env["PREFECT_SERVER_DOCKET_URL"] = redis_url
            if api_processes > 1:
                env.update(_redis_messaging(redis_url))
        api_url = stack.enter_context(_server_on_a_port(home, env, port, api_processes, startup_timeout))
        if api_processes > 1:
            stack.enter_context(_services_process(home, env))
        yield api_url


@contextmanager
def _server_on_a_port(home: Path, env: dict[str, str], port: int | None, api_processes: int,
                      startup_timeout: float) -> Iterator[str]:
    """`prefect server start` on `port`, or on a free one: a port found free can be taken before the server binds
    it (by another server starting, or as the local end of a connection: free ports come from the same range), so
    a start that finds it in use is tried again on another, up to PORT_TRIES times. Yields the API URL."""
    for attempt in range(1, PORT_TRIES + 1):
        chosen = port or free_port()
        api_url = f"http://127.0.0.1:{chosen}/api"
        # The UI asks the API where its settings say, not where this server listens: without this it calls
        # port 4200 ("Can't connect to Server API"), or another Prefect server that happens to listen there.
        env["PREFECT_UI_API_URL"] = api_url
        stack = ExitStack()
        try:
            # SIGINT: the way `prefect server start` is stopped in a terminal.
            stack.enter_context(server_process(
                [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(chosen), "--workers",
                 str(api_processes)],
                home / "server.log", lambda: _healthy(api_url), "the Prefect server", startup_timeout, signal.SIGINT,
                env))
        except RuntimeError as error:
            stack.close()
            if port or attempt == PORT_TRIES or "address already in use" not in str(error):
                raise
            continue
        with stack:
            yield api_url
        return


def _redis_messaging(redis_url: str) -> dict[str, str]:
    """The settings that put a Prefect server's events, caches and concurrency leases in Redis, as Prefect's
    check of `--workers` asks."""
    address = urlsplit(redis_url)
    return {
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_HOST": address.hostname or "127.0.0.1",
        "PREFECT_REDIS_MESSAGING_PORT": str(address.port),
        "PREFECT_REDIS_MESSAGING_DB": address.path.lstrip("/") or "0",
    }


@contextmanager
def _services_process(home: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """`prefect server services start`: the services of a server whose API processes run none. Ready once it
    logs that it starts them (it serves no port to ask)."""
    log_path = home / "services.log"
    start = log_path.stat().st_size if log_path.exists() else 0

    def started() -> bool:
        with open(log_path, "rb") as log:
            log.seek(start)
            return b"Starting services" in log.read()

    with server_process([PREFECT, "server", "services", "start"], log_path, started, "Prefect's services", 90.0,
                        signal.SIGINT, env) as process:
        yield process


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
def controller_worker(prefect: Prefect, log_name: str = "controller.log",
                      name: str | None = None) -> Iterator[subprocess.Popen]:
    """The process worker of pool dendro-controller, in the project (the subscription deployment's pull step
    runs the flow from there), as `prefect.controller_worker` while it runs. Stop the subscription flow runs it
    runs first: stopping a process worker leaves its flow runs' processes running."""
    with prefect.worker("dendro-controller", "process", PROJECT_DIR, log_name, name=name) as worker:
        prefect.controller_worker = worker
        try:
            yield worker
        finally:
            prefect.controller_worker = None


@contextmanager
def running_prefect(home: Path, *, database: str = "postgres", project: bool = True,
                    controller: bool = True, api_processes: int = 1) -> Iterator[Prefect]:
    """A Prefect server with its database on a PostgreSQL server of its own under `home/postgres` (`postgres`),
    or under `home` (`sqlite`; see prefect_database); with prefect.yaml's work pools and deployments (`project`) and
    the process worker of pool dendro-controller (`controller`); `api_processes` > 1: Prefect's scale-out server
    (see prefect_server). Within, this process's Prefect client talks
    to it (PREFECT_API_URL)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home.mkdir(mode=0o700, parents=True, exist_ok=True)  # the database holds the blocks' credentials
    with ExitStack() as stack:
        database_url = stack.enter_context(postgres_database(home / "postgres")) if database == "postgres" else None
        prefect = Prefect(home, stack.enter_context(prefect_server(home, database_url=database_url,
                                                                        api_processes=api_processes)))
        stack.enter_context(temporary_settings({PREFECT_API_URL: prefect.api_url}))
        if project:
            deploy_project(prefect.api_url, prefect.home)
        if controller:
            stack.enter_context(controller_worker(prefect))
        yield prefect
