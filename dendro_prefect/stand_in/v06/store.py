"""SQLite storage of the 0.6 service stand-in: users, services, service apps, compute clients and jobs.

A database of its own (beside the 0.2 stand-in's, never mixed with it). Each record is stored as the
service's document (JSON) beside the few columns that queries need, as the service keeps MongoDB documents.
Every method is atomic (a lock, and a transaction where a method reads before it writes):
`update_job(..., if_status=...)` is the service's `atomicUpdateJob`, a conditional update that exactly one of
two racing callers wins.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import string
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, api_key TEXT, document TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS services (name TEXT PRIMARY KEY, document TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS service_apps (
    service_name TEXT NOT NULL, app_name TEXT NOT NULL, document TEXT NOT NULL, PRIMARY KEY (service_name, app_name)
);
CREATE TABLE IF NOT EXISTS compute_clients (id TEXT PRIMARY KEY, document TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, service_name TEXT NOT NULL, status TEXT NOT NULL, compute_client_id TEXT,
    definition_hash TEXT NOT NULL, created REAL NOT NULL, document TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_service ON jobs (service_name, status);
CREATE INDEX IF NOT EXISTS jobs_by_hash ON jobs (service_name, definition_hash, created);
"""
ID_ALPHABET = string.ascii_letters + string.digits


def random_id(length: int) -> str:
    """As the service's `generateRandomId`: letters of both cases and digits."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(length))


class ServiceStore:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def _query(self, sql: str, *args: Any) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _document(self, sql: str, *args: Any) -> dict | None:
        rows = self._query(sql, *args)
        return json.loads(rows[0][0]) if rows else None

    def _documents(self, sql: str, *args: Any) -> list[dict]:
        return [json.loads(row[0]) for row in self._query(sql, *args)]

    # --- users -------------------------------------------------------------------------------------------------

    def user(self, user_id: str) -> dict | None:
        return self._document("SELECT document FROM users WHERE id = ?", user_id)

    def user_for_api_key(self, api_key: str) -> dict | None:
        return self._document("SELECT document FROM users WHERE api_key = ?", api_key) if api_key else None

    def insert_user(self, user: dict) -> None:
        """A user that exists is kept as it is (the service's upsert with `$setOnInsert`)."""
        self._query("INSERT OR IGNORE INTO users VALUES (?, ?, ?)", user["userId"], user["apiKey"], json.dumps(user))

    # --- services and their apps ---------------------------------------------------------------------------------

    def service(self, service_name: str) -> dict | None:
        return self._document("SELECT document FROM services WHERE name = ?", service_name)

    def insert_service(self, service: dict) -> bool:
        """False when a service of that name exists."""
        with self._lock:
            cursor = self._db.execute("INSERT OR IGNORE INTO services VALUES (?, ?)",
                                      (service["serviceName"], json.dumps(service)))
            return cursor.rowcount == 1

    def service_app(self, service_name: str, app_name: str) -> dict | None:
        return self._document("SELECT document FROM service_apps WHERE service_name = ? AND app_name = ?",
                              service_name, app_name)

    def service_apps(self, *, service_name: str | None = None, app_name: str | None = None) -> list[dict]:
        return self._documents("SELECT document FROM service_apps WHERE (?1 IS NULL OR service_name = ?1) "
                               "AND (?2 IS NULL OR app_name = ?2) ORDER BY rowid", service_name, app_name)

    def put_service_app(self, app: dict) -> None:
        self._query("INSERT OR REPLACE INTO service_apps VALUES (?, ?, ?)", app["serviceName"], app["appName"],
                    json.dumps(app))

    # --- compute clients -------------------------------------------------------------------------------------------

    def compute_client(self, compute_client_id: str) -> dict | None:
        return self._document("SELECT document FROM compute_clients WHERE id = ?", compute_client_id)

    def insert_compute_client(self, compute_client: dict) -> None:
        self._query("INSERT INTO compute_clients VALUES (?, ?)", compute_client["computeClientId"],
                    json.dumps(compute_client))

    def update_compute_client(self, compute_client_id: str, changes: dict) -> None:
        with self._lock, self._transaction():
            row = self._db.execute("SELECT document FROM compute_clients WHERE id = ?", (compute_client_id,)).fetchone()
            if row is not None:
                self._db.execute("UPDATE compute_clients SET document = ? WHERE id = ?",
                                 (json.dumps({**json.loads(row[0]), **changes}), compute_client_id))

    # --- jobs -------------------------------------------------------------------------------------------------------

    def insert_job(self, job: dict) -> None:
        self._query("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?)", job["jobId"], job["serviceName"], job["status"],
                    job["computeClientId"], job["jobDefinitionHash"], job["timestampCreatedSec"], json.dumps(job))

    def job(self, job_id: str) -> dict | None:
        return self._document("SELECT document FROM jobs WHERE id = ?", job_id)

    def jobs(self, *, service_name: str | None = None, statuses: Iterable[str] | None = None,
             compute_client_id: str | None = None) -> list[dict]:
        """Jobs in the order they were created, narrowed by the columns given."""
        statuses = list(statuses) if statuses is not None else None
        status_filter = f"AND status IN ({','.join('?' * len(statuses))})" if statuses is not None else ""
        return self._documents(
            "SELECT document FROM jobs WHERE (?1 IS NULL OR service_name = ?1) AND (?2 IS NULL OR compute_client_id = ?2) "
            f"{status_filter} ORDER BY created, rowid", service_name, compute_client_id, *(statuses or []))

    def latest_job_with_hash(self, service_name: str, definition_hash: str) -> dict | None:
        return self._document("SELECT document FROM jobs WHERE service_name = ? AND definition_hash = ? "
                              "ORDER BY created DESC, rowid DESC LIMIT 1", service_name, definition_hash)

    def update_job(self, job_id: str, changes: dict, *, unset: tuple[str, ...] = (),
                   if_status: str | None = None) -> bool:
        """Set `changes` and remove the fields `unset` (the service's `$set` and `$unset`); with `if_status`, only
        while the job has that status. False when no job was changed."""
        with self._lock, self._transaction():
            row = self._db.execute("SELECT document FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return False
            job = json.loads(row[0])
            if if_status is not None and job["status"] != if_status:
                return False
            job.update(changes)
            for key in unset:
                job.pop(key, None)
            self._db.execute("UPDATE jobs SET status = ?, compute_client_id = ?, document = ? WHERE id = ?",
                             (job["status"], job["computeClientId"], json.dumps(job), job_id))
            return True

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """A write transaction taken at once (BEGIN IMMEDIATE): a read-modify-write that no other connection to
        the database interleaves with, beside the lock that serializes this connection's threads."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def delete_jobs(self, job_ids: list[str]) -> None:
        if job_ids:
            self._query(f"DELETE FROM jobs WHERE id IN ({','.join('?' * len(job_ids))})", *job_ids)
