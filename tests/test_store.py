"""The store: migrations, SQLite settings, opening old, new, foreign and unwritable databases,
on SQLite and (``@both_backends``) PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import text

from labelfix.errors import StoreError
from labelfix.store import Store, resolve_url
from labelfix.store.engine import head_revision
from labelfix.store.models import Base
from tests.conftest import (
    Database,
    PostgresDatabase,
    both_backends,
    db_rows,
    fresh_postgres_database,
    postgres_server_url,
)


def _migrated(db: Database) -> object:
    """A database built by running every migration (not by the fresh-database shortcut)."""
    from sqlalchemy import create_engine

    from labelfix.store.engine import migrate

    url = resolve_url(str(db))
    engine = create_engine(url)
    migrate(engine, url, current=None)
    return engine


@both_backends
def test_models_match_migrations(db: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = _migrated(db)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
        assert context.get_current_revision() == head_revision()
    engine.dispose()  # type: ignore[attr-defined]
    assert diff == []


def test_schema_head_constant_is_the_newest_migration() -> None:
    from labelfix.store.engine import SCHEMA_HEAD

    assert SCHEMA_HEAD == head_revision()


def test_a_fresh_database_equals_a_migrated_one(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    fresh = Store(resolve_url(tmp_path / "fresh.db")).engine
    with fresh.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        assert context.get_current_revision() == head_revision()
    migrated = _migrated(tmp_path / "migrated.db")

    def schema(engine: object) -> list[tuple]:
        with engine.connect() as connection:  # type: ignore[attr-defined]
            rows = connection.execute(text(
                "select type, name, tbl_name from sqlite_master where name not like 'sqlite_%' "
                "order by type, name")).all()
        return [tuple(r) for r in rows]

    assert schema(fresh) == schema(migrated)


# Tables, columns with their types, defaults and nullability, constraints and indexes, as
# PostgreSQL itself describes them.
PG_SCHEMA = """
select 'column', c.relname, a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || case when a.attnotnull then ' not null' else '' end
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
from pg_attribute a join pg_class c on c.oid = a.attrelid
join pg_namespace n on n.oid = c.relnamespace
left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
where n.nspname = 'public' and c.relkind = 'r' and a.attnum > 0 and not a.attisdropped
union all
select 'constraint', conrelid::regclass::text, conname || ' ' || pg_get_constraintdef(oid)
from pg_constraint where connamespace = 'public'::regnamespace
union all
select 'index', tablename, indexdef from pg_indexes where schemaname = 'public'
order by 1, 2, 3
"""


def test_a_fresh_postgres_database_equals_a_migrated_one() -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with fresh_postgres_database() as fresh, fresh_postgres_database() as migrated:
        engine = Store(fresh.url).engine
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            assert context.get_current_revision() == head_revision()
        engine.dispose()
        _migrated(migrated).dispose()  # type: ignore[attr-defined]
        shortcut, migrations = db_rows(fresh, PG_SCHEMA), db_rows(migrated, PG_SCHEMA)
    assert len(shortcut) > 100
    assert shortcut == migrations


@both_backends
def test_databases_opened_at_once_by_several_processes_are_created_once(db: Database) -> None:
    """Four stores opening one new database together (SQLite: BEGIN IMMEDIATE; PostgreSQL:
    an advisory lock) all succeed, and the schema is made once."""
    import threading

    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def open_one() -> None:
        store = Store(resolve_url(str(db)))
        start.wait()
        try:
            store.engine  # noqa: B018
        except BaseException as exc:  # noqa: BLE001 -- collected for the assertion
            errors.append(exc)
        finally:
            store.dispose()

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert db_rows(db, "select version_num from alembic_version") == [(head_revision(),)]


@both_backends
def test_open_creates_database_at_head(db: Database) -> None:
    store = Store(resolve_url(str(db)))
    with store.session() as session:
        revision = session.execute(text("select version_num from alembic_version")).scalar()
        assert session.get_bind().dialect.name == ("postgresql" if isinstance(
            db, PostgresDatabase) else "sqlite")
    store.dispose()
    assert revision == head_revision()


def test_open_creates_database_at_head_with_sqlite_settings(db: Path) -> None:
    store = Store(resolve_url(db))
    with store.session() as session:
        assert session.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert session.execute(text("PRAGMA busy_timeout")).scalar() == 30000
        revision = session.execute(text("select version_num from alembic_version")).scalar()
    assert revision == head_revision()


def test_opening_waits_for_another_writer_to_switch_to_wal(tmp_path: Path) -> None:
    """SQLite refuses a journal-mode change at once, busy timeout or not, while another
    connection writes in rollback mode; labelfix must wait for that write, not fail."""
    import sqlite3
    import threading
    import time

    path = tmp_path / "shared.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE someone_elses (x)")
    released = threading.Event()

    def finish() -> None:
        time.sleep(0.5)
        other.execute("ROLLBACK")
        other.close()
        released.set()

    threading.Thread(target=finish).start()
    store = Store(resolve_url(path))
    try:
        with store.session() as session:
            assert released.is_set()
            assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert session.execute(text("select version_num from alembic_version")).scalar() \
                == head_revision()
    finally:
        store.dispose()


@both_backends
def test_foreign_keys_are_enforced(db: Database) -> None:
    from sqlalchemy.exc import IntegrityError

    from labelfix.store.models import DatasetVersion

    store = Store(resolve_url(str(db)))
    with pytest.raises(IntegrityError), store.session() as session:
        session.add(DatasetVersion(dataset_id=999, version=0, fingerprint="x", row_count=1))
        session.flush()
    store.dispose()


@both_backends
def test_database_from_a_newer_labelfix_is_refused(db: Database, run) -> None:
    Store(resolve_url(str(db))).engine.dispose()
    db_rows(db, "update alembic_version set version_num = 'ffff_from_the_future'")
    with pytest.raises(StoreError, match="newer labelfix"):
        Store(resolve_url(str(db))).engine  # noqa: B018
    result = run("audits")
    assert result.exit_code == 2
    assert "newer labelfix" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@both_backends
def test_foreign_database_is_refused(db: Database) -> None:
    db_rows(db, "create table something_else (x int)")
    with pytest.raises(StoreError, match="not labelfix's"):
        Store(resolve_url(str(db))).engine  # noqa: B018


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write read-only files")
def test_unwritable_database_fails_cleanly(tmp_path: Path, run, csv_dataset, probs_npy) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        result = run("--db", str(folder / "x.db"), "scan", str(csv_dataset), "--probs",
                     str(probs_npy))
    finally:
        folder.chmod(0o700)
    assert result.exit_code == 2
    assert "Traceback" not in result.stderr


def test_database_in_missing_folder_fails_with_fix(tmp_path: Path, csv_dataset, probs_npy) -> None:
    from typer.testing import CliRunner

    from labelfix.cli import app

    missing = tmp_path / "no" / "such" / "folder" / "x.db"
    result = CliRunner().invoke(app, ["--db", str(missing), "scan", str(csv_dataset),
                                      "--probs", str(probs_npy)])
    assert result.exit_code == 2
    assert "does not exist" in result.stderr and "--db" in result.stderr
    assert not missing.parent.exists()


def test_read_only_database_file_fails_cleanly(tmp_path: Path, run, csv_dataset, probs_npy,
                                               db: Path) -> None:
    """A database opened read-only (as on a read-only mount) cannot record a scan."""
    assert run("db", "upgrade").exit_code == 0
    url = f"sqlite:///file:{db}?mode=ro&uri=true"
    from typer.testing import CliRunner

    from labelfix.cli import app

    result = CliRunner().invoke(app, ["--db", url, "scan", str(csv_dataset), "--probs",
                                      str(probs_npy)])
    assert result.exit_code == 2, result.stderr
    assert "cannot be written" in result.stderr
    assert "Traceback" not in result.stderr


@both_backends
def test_db_upgrade_and_current(run, db: Database) -> None:
    before = run("db", "current")
    assert before.exit_code == 0
    assert "none" in before.stdout and "upgrade" in before.stdout
    assert run("db", "upgrade").exit_code == 0
    after = run("db", "current")
    assert f"{head_revision()} (head)" in after.stdout


def test_db_env_var_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from labelfix.cli import app

    target = tmp_path / "from_env.db"
    monkeypatch.setenv("LABELFIX_DB", str(target))
    result = CliRunner().invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.stderr
    assert target.exists()


def test_resolve_url_accepts_paths_and_urls(tmp_path: Path) -> None:
    assert resolve_url(tmp_path / "a.db") == f"sqlite:///{tmp_path / 'a.db'}"
    assert resolve_url("postgresql+psycopg://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    with pytest.raises(StoreError):
        resolve_url("nonsense://")


def test_postgres_urls_get_the_psycopg_driver() -> None:
    assert resolve_url("postgresql://u@h:5433/db") == "postgresql+psycopg://u@h:5433/db"
    assert resolve_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert resolve_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"


def test_a_bad_url_never_shows_its_password() -> None:
    with pytest.raises(StoreError) as caught:
        resolve_url("mysqlx://admin:hunter2secret@h/db")
    assert "hunter2secret" not in str(caught.value) and "admin" in str(caught.value)


def test_an_unreachable_postgres_server_is_one_line_without_the_password() -> None:
    from typer.testing import CliRunner

    from labelfix.cli import app

    url = "postgresql+psycopg://labelfix:hunter2secret@127.0.0.1:1/labelfix"
    for args in (["audits"], ["db", "current"], ["--verbose", "db", "upgrade"]):
        result = CliRunner().invoke(app, ["--db", url, *args])
        assert result.exit_code == 1, result.output
        assert "hunter2secret" not in result.stderr + result.stdout
        assert "cannot connect to database postgresql+psycopg://labelfix:***@127.0.0.1:1" \
            in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_missing_psycopg_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    with pytest.raises(StoreError, match=r"pip install 'labelfix\[postgres\]'"):
        Store(resolve_url("postgresql://u:secret@127.0.0.1:1/db")).engine  # noqa: B018


def test_postgres_password_is_never_printed() -> None:
    """The test server accepts any password (trust): it must still never reach the output."""
    from sqlalchemy.engine import make_url
    from typer.testing import CliRunner

    from labelfix.cli import app

    with fresh_postgres_database() as database:
        url = make_url(database.url).set(password="hunter2secret").render_as_string(
            hide_password=False)
        result = CliRunner().invoke(app, ["--db", url, "--verbose", "db", "upgrade"])
        assert result.exit_code == 0, result.output
        current = CliRunner().invoke(app, ["--db", url, "db", "current"])
    output = result.stdout + result.stderr + current.stdout + current.stderr
    assert "hunter2secret" not in output
    assert "postgres:***@" in current.stdout and "(head)" in current.stdout


def test_a_missing_postgres_database_names_createdb() -> None:
    from sqlalchemy.engine import make_url
    from typer.testing import CliRunner

    from labelfix.cli import app

    url = make_url(postgres_server_url()).set(database="labelfix_no_such_db").render_as_string(
        hide_password=False)
    result = CliRunner().invoke(app, ["--db", url, "audits"])
    assert result.exit_code == 1
    assert "does not exist" in result.stderr and "createdb labelfix_no_such_db" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
