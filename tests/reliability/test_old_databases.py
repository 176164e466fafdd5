"""A database made by the first labelfix schema upgrades to the head with every row intact."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np

from labelfix.store.engine import SCHEMA_HEAD

FIXTURE = Path(__file__).parent / "fixtures" / "labelfix-0001.db"


def _counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return {table: db.execute(f"select count(*) from {table}").fetchone()[0]
                for table in ("datasets", "dataset_versions", "probability_sets",
                              "probability_chunks", "audits", "candidates")}


def test_revision_0001_database_upgrades_with_every_row_intact(run, db: Path) -> None:
    shutil.copy(FIXTURE, db)
    before = _counts(db)
    current = run("db", "current")
    assert current.exit_code == 0
    assert f"schema revision 0001 (head is {SCHEMA_HEAD}; run labelfix db upgrade)" \
        in current.stdout
    audits = run("audits", "--json")  # opening migrates
    assert audits.exit_code == 0, audits.stderr
    assert [(a["audit_id"], a["dataset"], a["total"], a["candidates"], a["status"])
            for a in audits.json()] == [(1, "reviews", 6, 2, "complete")]
    assert f"{SCHEMA_HEAD} (head)" in run("db", "current").stdout
    assert _counts(db) == before
    candidates = run("candidates", "--json").json()
    assert [(c["row"], c["given_label"], c["suggested_label"], c["review_state"])
            for c in candidates] == [(2, "pos", "neg", "pending"), (4, "neg", "pos", "pending")]
    with sqlite3.connect(db) as connection:
        blob = connection.execute("select data from probability_chunks").fetchone()[0]
        dropped = connection.execute(
            "select discarded_dropped from dataset_versions").fetchone()[0]
    assert np.frombuffer(blob, "<f4").reshape(6, 2)[4].tolist() == [
        np.float32(0.05), np.float32(0.95)]
    assert dropped == 0  # the server default filled the column added by 0003


def test_upgraded_database_takes_new_work(run, db: Path) -> None:
    """Review on the upgraded database writes the tables later revisions added."""
    shutil.copy(FIXTURE, db)
    result = run("review", "--annotator", "ann", input="a\nq\n")
    assert result.exit_code == 0, result.stderr
    history = run("history", "--json").json()
    assert [(h["row"], h["old_label"], h["new_label"], h["annotator"]) for h in history] == [
        (2, "pos", "neg", "ann")]


def test_downgrade_to_the_first_revision_on_an_empty_database(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import create_engine, inspect

    from labelfix.store.engine import alembic_config, migrate, resolve_url

    url = resolve_url(tmp_path / "empty.db")
    engine = create_engine(url)
    migrate(engine, url, current=None)
    config = alembic_config(url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0001")
    with engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
        version = connection.exec_driver_sql("select version_num from alembic_version").scalar()
    assert version == "0001"
    assert "annotations" not in tables and "candidates" in tables
