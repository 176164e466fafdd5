"""Shared fixtures: a temp database per test, the CLI, seeded synthetic datasets.

``db`` is a SQLite file by default. Tests marked ``@both_backends`` run twice, with ids
``sqlite`` and ``postgresql``: the second gets a fresh PostgreSQL database of its own on the
server named by ``LABELFIX_TEST_POSTGRES_URL`` (created empty, so labelfix builds the schema as
it does for users, and dropped afterwards), and skips when the variable is not set.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from labelfix.cli import app

# Sorted, so that string labels map to these indices without --labels.
CLASSES = ("Business", "SciTech", "Sports", "World")
VOCAB = {
    "World": "president minister election war treaty embassy parliament protest border refugee",
    "Sports": "match goal coach season league striker tennis inning playoff championship",
    "Business": "stocks earnings merger profit shares investor revenue market bank quarterly",
    "SciTech": "software internet chip google space nasa browser linux wireless research",
}


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own folder, offline, with no database from the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LABELFIX_DB", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


POSTGRES_URL_VARIABLE = "LABELFIX_TEST_POSTGRES_URL"
BACKENDS = [pytest.param("sqlite", id="sqlite"), pytest.param("postgresql", id="postgresql")]
# Runs a test against SQLite and against PostgreSQL (through the ``db`` fixture).
both_backends = pytest.mark.parametrize("db", BACKENDS, indirect=True)


@dataclass(frozen=True)
class PostgresDatabase:
    """A database of its own on the test PostgreSQL server; ``str()`` is what --db takes."""

    url: str

    def __str__(self) -> str:
        return self.url


Database = Path | PostgresDatabase


def postgres_server_url() -> str:
    """The test server's URL, or a skip that says how to give one."""
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.skip(f"no PostgreSQL server: set {POSTGRES_URL_VARIABLE} to a URL like "
                    "postgresql+psycopg://postgres@127.0.0.1:5432/postgres (.ci/run starts one)")
    return url


@contextmanager
def fresh_postgres_database() -> Iterator[PostgresDatabase]:
    """An empty database on the test server, dropped afterwards with whatever is connected."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    server = make_url(postgres_server_url())
    name = f"labelfix_t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(server, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield PostgresDatabase(server.set(database=name).render_as_string(
                hide_password=False))
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture()
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """The test's database: a SQLite file, or with ``@both_backends`` also PostgreSQL."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield tmp_path / "labelfix.db"
        return
    with fresh_postgres_database() as database:
        yield database


def db_rows(db: Database, sql: str) -> list[tuple]:
    """The rows an SQL statement gives (committed), on either kind of test database."""
    if isinstance(db, PostgresDatabase):
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        engine = create_engine(db.url, poolclass=NullPool)
        try:
            with engine.begin() as connection:
                result = connection.execute(text(sql))
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            engine.dispose()
    import sqlite3

    with sqlite3.connect(db) as connection:
        return [tuple(r) for r in connection.execute(sql)]


def db_count(db: Database, sql: str) -> int:
    return int(db_rows(db, sql)[0][0])


def db_bytes(db: Database) -> bytes:
    """Everything the database holds, to search for what must never be stored (keys)."""
    if isinstance(db, PostgresDatabase):
        tables = [r[0] for r in db_rows(db, "select tablename from pg_tables "
                                            "where schemaname = 'public'")]
        return "\n".join(str(row) for table in tables
                         for row in db_rows(db, f'select * from "{table}"')).encode()
    return b"".join(path.read_bytes() for path in sorted(db.parent.glob(f"{db.name}*")))


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> object:
        return json.loads(self.stdout)


@pytest.fixture()
def run(db: Database) -> Callable[..., Result]:
    """Run the labelfix CLI in-process against the test's database."""

    def invoke(*args: str, input: str | None = None) -> Result:
        runner = CliRunner()
        result = runner.invoke(app, ["--db", str(db), *args], input=input,
                               catch_exceptions=False)
        return Result(result.exit_code, result.stdout, result.stderr)

    return invoke


@dataclass
class Synthetic:
    texts: list[str]
    labels: np.ndarray  # (N,) int64, the given (noisy) labels
    true_labels: np.ndarray  # (N,) int64
    flipped: np.ndarray  # row indices whose given label is wrong
    label_names: tuple[str, ...] = CLASSES

    @property
    def n(self) -> int:
        return len(self.texts)

    def label_strings(self) -> list[str]:
        return [self.label_names[i] for i in self.labels]

    def probs(self, *, seed: int = 1, confidence: float = 0.85) -> np.ndarray:
        """(N, K) float32 probabilities of a decent model that knows the true labels."""
        rng = np.random.default_rng(seed)
        k = len(self.label_names)
        noise = rng.dirichlet(np.ones(k), size=self.n)
        onehot = np.eye(k)[self.true_labels]
        mixed = confidence * onehot + (1 - confidence) * noise
        return (mixed / mixed.sum(axis=1, keepdims=True)).astype(np.float32)

    def frame(self) -> object:
        import pandas as pd

        return pd.DataFrame({"text": self.texts, "label": self.label_strings()})

    def write(self, path: Path, *, integer_labels: bool = False) -> Path:
        frame = self.frame()
        if integer_labels:
            frame["label"] = self.labels
        suffix = path.suffix
        if suffix == ".csv":
            frame.to_csv(path, index=False)
        elif suffix == ".tsv":
            frame.to_csv(path, index=False, sep="\t")
        elif suffix == ".jsonl":
            frame.to_json(path, orient="records", lines=True)
        elif suffix == ".parquet":
            frame.to_parquet(path, index=False)
        else:
            raise ValueError(suffix)
        return path


def make_synthetic(n: int = 400, *, noise: float = 0.08, seed: int = 0) -> Synthetic:
    """Texts of class-specific words with ``noise`` of the labels flipped, seeded."""
    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    true = rng.integers(0, k, size=n)
    texts = []
    for i, label in enumerate(true):
        words = VOCAB[CLASSES[label]].split()
        chosen = rng.choice(words, size=rng.integers(5, 10))
        texts.append(f"{' '.join(chosen)} item{i}")
    given = true.copy()
    flipped = rng.choice(n, size=int(noise * n), replace=False)
    for row in flipped:
        given[row] = (true[row] + rng.integers(1, k)) % k
    return Synthetic(texts=texts, labels=given.astype(np.int64),
                     true_labels=true.astype(np.int64), flipped=np.sort(flipped))


@pytest.fixture()
def synthetic() -> Synthetic:
    return make_synthetic()


@pytest.fixture()
def csv_dataset(tmp_path: Path, synthetic: Synthetic) -> Path:
    return synthetic.write(tmp_path / "reviews.csv")


@pytest.fixture()
def probs_npy(tmp_path: Path, synthetic: Synthetic) -> Path:
    path = tmp_path / "probs.npy"
    np.save(path, synthetic.probs())
    return path


def db_exists_with_data(db: Database) -> bool:
    """Whether the store holds any dataset or audit (used to prove nothing was written)."""
    if isinstance(db, PostgresDatabase):
        tables = {r[0] for r in db_rows(db, "select tablename from pg_tables")}
    elif not db.exists():
        return False
    else:
        tables = {r[0] for r in db_rows(db, "select name from sqlite_master")}
    if "audits" not in tables:
        return False
    return bool(db_count(db, "select count(*) from audits")
                or db_count(db, "select count(*) from datasets"))


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
