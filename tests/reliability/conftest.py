"""Helpers for the reliability tests: the CLI in a subprocess, database checks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from tests.conftest import Database, PostgresDatabase, db_count, db_rows


@pytest.fixture()
def cli(db: Database) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``python -m labelfix --db DB ...`` as a separate process (it can be killed)."""

    def invoke(*args: str, crash_at: str | None = None, env: dict[str, str] | None = None,
               input: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        environment = dict(os.environ)
        environment.pop("LABELFIX_CRASH_AT", None)
        environment.update(env or {})
        if crash_at:
            environment["LABELFIX_CRASH_AT"] = crash_at
        return subprocess.run(
            [sys.executable, "-m", "labelfix", "--db", str(db), *args], capture_output=True,
            text=True, env=environment, input=input, timeout=timeout,
        )

    return invoke


def integrity_ok(db: Database) -> bool:
    """SQLite: the file passes ``PRAGMA integrity_check``. PostgreSQL, whose server keeps its
    files sound: no labelfix connection is left open on the database (a killed process's
    transaction was rolled back and holds no lock that would stall the rerun)."""
    if isinstance(db, PostgresDatabase):
        deadline = time.monotonic() + 10
        query = ("select count(*) from pg_stat_activity where datname = current_database() "
                 "and application_name = 'labelfix'")
        while db_count(db, query) and time.monotonic() < deadline:
            time.sleep(0.1)
        return db_count(db, query) == 0
    return db_rows(db, "PRAGMA integrity_check")[0][0] == "ok"


def count(db: Database, sql: str) -> int:
    return db_count(db, sql)
