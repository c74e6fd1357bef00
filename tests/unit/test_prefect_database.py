"""A new embedded Prefect server's database starts as a copy of a template migrated once per Prefect version
(prefect_database): the rules of the templates here; every e2e session's first server start makes the
PostgreSQL one for real (the session's server), and tests/fault/test_prefect_restart.py the SQLite one."""

from __future__ import annotations

import sqlite3

from dendro_prefect import prefect_database


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
    monkeypatch.setattr(prefect_database, "TEMPLATES", tmp_path / "templates")
    (tmp_path / "templates").mkdir()
    _database(tmp_path / "templates" / prefect_database.SQLITE_TEMPLATE, "head-of-this-version")
    _database(tmp_path / "templates" / "prefect-0.0.1-blocks.db", "head-of-another-version")
    (tmp_path / "server").mkdir()
    prefect_database.migrated_sqlite(tmp_path / "server" / "prefect.db")
    assert _revision(tmp_path / "server" / "prefect.db") == "head-of-this-version"


def test_an_existing_database_is_left_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setattr(prefect_database, "TEMPLATES", tmp_path / "no-templates")
    _database(tmp_path / "prefect.db", "a-server's-own")
    prefect_database.migrated_sqlite(tmp_path / "prefect.db")
    assert _revision(tmp_path / "prefect.db") == "a-server's-own"
    assert not (tmp_path / "no-templates").exists()


def test_a_template_is_made_once_and_a_partial_one_left_by_a_killed_process_is_removed(tmp_path):
    template = tmp_path / "template"
    (tmp_path / "template.tmp").mkdir()  # what a process killed while making it leaves
    (tmp_path / "template.tmp" / "half-written").write_text("")
    made = []

    def make(partial):
        assert not partial.exists()
        partial.mkdir()
        (partial / "whole").write_text("")
        made.append(partial)

    assert prefect_database.made_once(template, make) == template
    assert prefect_database.made_once(template, make) == template
    assert len(made) == 1 and [p.name for p in template.iterdir()] == ["whole"]
