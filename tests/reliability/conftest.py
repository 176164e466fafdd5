"""Helpers for the reliability tests: the CLI in a subprocess, database checks."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture()
def cli(db: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
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


def integrity_ok(db: Path) -> bool:
    with sqlite3.connect(db) as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def count(db: Path, sql: str) -> int:
    with sqlite3.connect(db) as connection:
        return int(connection.execute(sql).fetchone()[0])
