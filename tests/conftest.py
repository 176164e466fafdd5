"""Shared fixtures: a temp database per test, the CLI, seeded synthetic datasets."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
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


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return tmp_path / "labelfix.db"


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> object:
        return json.loads(self.stdout)


@pytest.fixture()
def run(db: Path) -> Callable[..., Result]:
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


def db_exists_with_data(db: Path) -> bool:
    """Whether the store holds any dataset or audit (used to prove nothing was written)."""
    if not db.exists():
        return False
    import sqlite3

    with sqlite3.connect(db) as connection:
        tables = {r[0] for r in connection.execute("select name from sqlite_master")}
        if "audits" not in tables:
            return False
        audits = connection.execute("select count(*) from audits").fetchone()[0]
        datasets = connection.execute("select count(*) from datasets").fetchone()[0]
    return bool(audits or datasets)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
