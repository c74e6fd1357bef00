"""SQLite storage of the stand-in: resources, projects, files and jobs.

Jobs are stored as their wire documents (JSON) beside the few columns that queries need, so the
stand-in serves exactly what it was given and the schema stays small.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from ..protocol.models import UNFINISHED_STATUSES

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, apps TEXT NOT NULL DEFAULT '[]', spec TEXT, registered_at REAL
);
CREATE TABLE IF NOT EXISTS projects (id TEXT PRIMARY KEY, name TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, project_id TEXT NOT NULL, file_name TEXT NOT NULL, size INTEGER NOT NULL,
    blob_key TEXT NOT NULL, job_id TEXT, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, compute_resource_id TEXT NOT NULL, status TEXT NOT NULL, document TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_resource ON jobs (compute_resource_id, status);
CREATE INDEX IF NOT EXISTS jobs_by_project ON jobs (json_extract(document, '$.projectId'));
"""

# Who may move a job where (the real central's rules; `force_update` bypasses them). `queued` has none.
ALLOWED_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "starting": ("pending",),
    "running": ("starting",),
    "completed": ("running",),
    "failed": ("pending", "starting", "running"),
}
STATUS_TIMESTAMPS = {
    "queued": "timestampQueued",
    "starting": "timestampStarting",
    "running": "timestampStarted",
    "completed": "timestampFinished",
    "failed": "timestampFinished",
}


class NotFound(LookupError):
    pass


class TransitionError(ValueError):
    pass


def new_id(length: int = 8) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(length))


class Store:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def _query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- compute resources -----------------------------------------------------------------------------

    def register_resource(self, resource_id: str, name: str) -> None:
        """Register, or register again (a new name): as the real central, a valid code may be used again."""
        self._query(
            "INSERT INTO resources (id, name, registered_at) VALUES (?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET name = excluded.name",
            resource_id, name, time.time(),
        )

    def resource(self, resource_id: str) -> dict | None:
        rows = self._query("SELECT id, name, apps, spec FROM resources WHERE id = ?", resource_id)
        if not rows:
            return None
        rid, name, apps, spec = rows[0]
        return {"computeResourceId": rid, "name": name, "apps": json.loads(apps), "spec": json.loads(spec or "null")}

    def set_apps(self, resource_id: str, apps: list[dict]) -> None:
        self._require_resource(resource_id)
        self._query("UPDATE resources SET apps = ? WHERE id = ?", json.dumps(apps), resource_id)

    def set_spec(self, resource_id: str, spec: dict) -> None:
        self._query("UPDATE resources SET spec = ? WHERE id = ?", json.dumps(spec), resource_id)

    def _require_resource(self, resource_id: str) -> None:
        if not self._query("SELECT 1 FROM resources WHERE id = ?", resource_id):
            raise NotFound(f"compute resource {resource_id} is not registered")

    # --- projects and files ------------------------------------------------------------------------------

    def create_project(self, name: str) -> str:
        project_id = new_id()
        self._query("INSERT INTO projects VALUES (?, ?, ?)", project_id, name, time.time())
        return project_id

    def require_project(self, project_id: str) -> None:
        if not self._query("SELECT 1 FROM projects WHERE id = ?", project_id):
            raise NotFound(f"project {project_id} not found")

    def add_file(self, project_id: str, file_name: str, size: int, blob_key: str, job_id: str | None = None) -> str:
        """Add a file; one of the same name is replaced in place, keeping its id (as a job's output
        replaces the pending file that jobs downstream already name). An empty blob key = pending."""
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM files WHERE project_id = ? AND file_name = ?", (project_id, file_name)
            ).fetchone()
            file_id = row[0] if row else new_id()
            self._db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                (file_id, project_id, file_name, size, blob_key, job_id, time.time()),
            )
        return file_id

    def delete_files(self, project_id: str, file_names: list[str] | None = None, job_id: str | None = None) -> None:
        """Delete a project's files of these names, or those a job made (its outputs, pending or not)."""
        if file_names:
            placeholders = ",".join("?" for _ in file_names)
            self._query(f"DELETE FROM files WHERE project_id = ? AND file_name IN ({placeholders})",
                        project_id, *file_names)
        if job_id is not None:
            self._query("DELETE FROM files WHERE project_id = ? AND job_id = ?", project_id, job_id)

    def pending_file_names(self, project_ids: set[str]) -> set[tuple[str, str]]:
        """(project, file name) of the files that are a job's output not made yet (no content)."""
        if not project_ids:
            return set()
        placeholders = ",".join("?" for _ in project_ids)
        rows = self._query("SELECT project_id, file_name FROM files "
                           f"WHERE blob_key = '' AND project_id IN ({placeholders})", *project_ids)
        return {(project_id, file_name) for project_id, file_name in rows}

    def file(self, file_id: str) -> dict:
        rows = self._query("SELECT id, project_id, file_name, size, blob_key, job_id FROM files WHERE id = ?", file_id)
        if not rows:
            raise NotFound(f"file {file_id} not found")
        return dict(zip(("fileId", "projectId", "fileName", "size", "blobKey", "jobId"), rows[0]))

    def file_by_name(self, project_id: str, file_name: str) -> dict:
        rows = self._query("SELECT id FROM files WHERE project_id = ? AND file_name = ?", project_id, file_name)
        if not rows:
            raise NotFound(f"project {project_id} has no file {file_name}")
        return self.file(rows[0][0])

    def files(self, project_id: str) -> list[dict]:
        rows = self._query("SELECT id FROM files WHERE project_id = ? ORDER BY created", project_id)
        return [self.file(row[0]) for row in rows]

    # --- jobs --------------------------------------------------------------------------------------------

    def create_job(self, document: dict) -> None:
        self._query(
            "INSERT INTO jobs VALUES (?, ?, ?, ?)",
            document["jobId"], document["computeResourceId"], document["status"], json.dumps(document),
        )

    def insert_raw_job(self, resource_id: str, document: Any) -> str:
        """Store any JSON value verbatim as a job of `resource_id` (admin `raw_jobs`, for tests of
        malformed jobs); return its id: its `jobId` when that is a non-empty string, else a new one.
        It is unfinished, as any job, when its `status` is; a value that is not an object has no
        status and is served as pending."""
        self._require_resource(resource_id)
        is_object = isinstance(document, dict)
        job_id = document.get("jobId") if is_object else None
        if not isinstance(job_id, str) or not job_id:
            job_id = f"raw-{new_id(12)}"
        status = document.get("status") if is_object else "pending"
        with self._lock:
            try:
                self._db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?)", (
                    job_id, resource_id, status if isinstance(status, str) else json.dumps(status),
                    json.dumps(document),
                ))
            except sqlite3.IntegrityError:
                raise TransitionError(f"job {job_id} exists already") from None
        return job_id

    def raw_jobs(self, resource_id: str) -> list[tuple[str, Any]]:
        """(id, document) of the resource's jobs as stored: what `insert_raw_job` stored may be anything."""
        rows = self._query("SELECT id, document FROM jobs WHERE compute_resource_id = ? ORDER BY rowid", resource_id)
        return [(job_id, json.loads(document)) for job_id, document in rows]

    def job(self, job_id: str) -> dict:
        rows = self._query("SELECT document FROM jobs WHERE id = ?", job_id)
        if not rows:
            raise NotFound(f"No job with ID {job_id}")
        return json.loads(rows[0][0])

    def save_job(self, document: dict) -> None:
        self._query(
            "UPDATE jobs SET status = ?, document = ? WHERE id = ?",
            document["status"], json.dumps(document), document["jobId"],
        )

    def jobs(self, resource_id: str | None = None) -> Iterator[dict]:
        if resource_id is None:
            rows = self._query("SELECT document FROM jobs ORDER BY rowid")
        else:
            rows = self._query("SELECT document FROM jobs WHERE compute_resource_id = ? ORDER BY rowid", resource_id)
        return (json.loads(row[0]) for row in rows)

    def unfinished_jobs(self, resource_id: str) -> list[dict]:
        """As the real central answers: hidden are deleted jobs, jobs awaiting approval, and jobs with an
        input that is a pending file of their project (an output of a job that has not completed: a failed
        job's output stays pending until it is replaced or its job deleted)."""
        placeholders = ",".join("?" for _ in UNFINISHED_STATUSES)
        rows = self._query(
            f"SELECT document FROM jobs WHERE compute_resource_id = ? AND status IN ({placeholders}) ORDER BY rowid",
            resource_id, *UNFINISHED_STATUSES,
        )
        jobs = [json.loads(row[0]) for row in rows]
        jobs = [j for j in jobs if not (isinstance(j, dict) and (j.get("deleted") or j.get("pendingApproval")))]
        projects = {j["projectId"] for j in jobs if isinstance(j, dict) and isinstance(j.get("projectId"), str)}
        pending = self.pending_file_names(projects)
        return [j for j in jobs if not any(key in pending for key in _file_keys(j, "inputFiles"))]

    def project_jobs(self, project_id: str) -> list[dict]:
        """The jobs of a project."""
        rows = self._query("SELECT document FROM jobs WHERE json_extract(document, '$.projectId') = ? ORDER BY rowid",
                           project_id)
        return [json.loads(row[0]) for row in rows]

    def delete_job(self, job_id: str) -> dict:
        document = self.job(job_id)
        self._query("DELETE FROM jobs WHERE id = ?", job_id)
        return document


def _file_keys(job: Any, field: str) -> list[tuple[str, str]]:
    """(projectId, fileName) of a job's input or output files; none of a raw job (admin `raw_jobs`)
    without a projectId or list of files."""
    if not (isinstance(job, dict) and isinstance(job.get("projectId"), str) and isinstance(job.get(field), list)):
        return []
    return [(job["projectId"], f["fileName"]) for f in job[field] if isinstance(f, dict) and isinstance(f.get("fileName"), str)]


def apply_status(document: dict, status: str, error: str | None, force: bool) -> None:
    """Move a job document to `status` under the real central's transition rules, with its words."""
    current = document["status"]
    if not force and status in ALLOWED_TRANSITIONS and current not in ALLOWED_TRANSITIONS[status]:
        raise TransitionError(f"Cannot set job status to {status} when status is {current}")
    if error and status != "failed":
        raise TransitionError(f"Cannot set job error when status is {status}")
    document["status"] = status
    if error:
        document["error"] = error
    if status in STATUS_TIMESTAMPS:
        document[STATUS_TIMESTAMPS[status]] = time.time()
