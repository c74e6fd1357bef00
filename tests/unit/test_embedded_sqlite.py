"""A new embedded Prefect server's SQLite database starts as a copy of the migrated template of this Prefect
version (embedded.migrated_sqlite); every e2e session's first server start makes the template for real."""

from __future__ import annotations

import importlib.metadata
import sqlite3

from dendro_prefect import embedded


def _database(path, revision: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE alembic_version (version_num TEXT)")
        db.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
    db.close()


def _revision(path) -> str:
    with sqlite3.connect(path) as db:
        [(revision,)] = db.execute("SELECT version_num FROM alembic_version").fetchall()
    db.close()
    return revision


def test_a_new_database_is_a_copy_of_this_versions_template(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "SQLITE_TEMPLATES", tmp_path / "templates")
    (tmp_path / "templates").mkdir()
    _database(tmp_path / "templates" / f"prefect-{importlib.metadata.version('prefect')}.db", "head-of-this-version")
    _database(tmp_path / "templates" / "prefect-0.0.1.db", "head-of-another-version")
    (tmp_path / "server").mkdir()
    embedded.migrated_sqlite(tmp_path / "server" / "prefect.db")
    assert _revision(tmp_path / "server" / "prefect.db") == "head-of-this-version"


def test_an_existing_database_is_left_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "SQLITE_TEMPLATES", tmp_path / "no-templates")
    _database(tmp_path / "prefect.db", "a-server's-own")
    embedded.migrated_sqlite(tmp_path / "prefect.db")
    assert _revision(tmp_path / "prefect.db") == "a-server's-own"
    assert not (tmp_path / "no-templates").exists()
