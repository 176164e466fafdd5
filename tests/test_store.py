"""The store: migrations, SQLite settings, opening old, new, foreign and unwritable databases."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from labelfix.errors import StoreError
from labelfix.store import Store, resolve_url
from labelfix.store.engine import head_revision
from labelfix.store.models import Base


def _migrated(db: Path) -> object:
    """A database built by running every migration (not by the fresh-database shortcut)."""
    from sqlalchemy import create_engine

    from labelfix.store.engine import migrate

    url = resolve_url(db)
    engine = create_engine(url)
    migrate(engine, url, current=None)
    return engine


def test_models_match_migrations(db: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = _migrated(db)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
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


def test_open_creates_database_at_head_with_sqlite_settings(db: Path) -> None:
    store = Store(resolve_url(db))
    with store.session() as session:
        assert session.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert session.execute(text("PRAGMA busy_timeout")).scalar() == 30000
        revision = session.execute(text("select version_num from alembic_version")).scalar()
    assert revision == head_revision()


def test_foreign_keys_are_enforced(db: Path) -> None:
    from sqlalchemy.exc import IntegrityError

    from labelfix.store.models import DatasetVersion

    store = Store(resolve_url(db))
    with pytest.raises(IntegrityError), store.session() as session:
        session.add(DatasetVersion(dataset_id=999, version=0, fingerprint="x", row_count=1))
        session.flush()


def test_database_from_a_newer_labelfix_is_refused(db: Path, run) -> None:
    Store(resolve_url(db)).engine.dispose()
    with sqlite3.connect(db) as connection:
        connection.execute("update alembic_version set version_num = 'ffff_from_the_future'")
    with pytest.raises(StoreError, match="newer labelfix"):
        Store(resolve_url(db)).engine  # noqa: B018
    result = run("audits")
    assert result.exit_code == 2
    assert "newer labelfix" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_foreign_sqlite_file_is_refused(db: Path) -> None:
    with sqlite3.connect(db) as connection:
        connection.execute("create table something_else (x int)")
    with pytest.raises(StoreError, match="not labelfix's"):
        Store(resolve_url(db)).engine  # noqa: B018


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


def test_db_upgrade_and_current(run, db: Path) -> None:
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
