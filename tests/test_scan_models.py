"""`labelfix scan --model` and `--embed` through the CLI, on tiny models built in the tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import db_exists_with_data, make_synthetic
from tests.tiny_model import save_tiny_classifier, save_tiny_encoder

CLASSES = ("Business", "SciTech", "Sports", "World")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("models")
    texts = make_synthetic(120).texts
    return {
        "classifier": save_tiny_classifier(base / "classifier", labels=CLASSES, texts=texts),
        "renamed": save_tiny_classifier(base / "renamed", labels=("b", "s", "sp", "w"),
                                        texts=texts),
        "three": save_tiny_classifier(base / "three", labels=CLASSES[:3], texts=texts),
        "encoder": save_tiny_encoder(base / "encoder", texts=texts),
    }


@pytest.fixture()
def small_csv(tmp_path: Path) -> Path:
    return make_synthetic(120).write(tmp_path / "small.csv")


def test_scan_with_a_model_stores_its_probabilities_and_reuses_them(
    run, db: Path, small_csv: Path, models: dict[str, Path]
) -> None:
    from labelfix.data import SourceSpec, load
    from labelfix.models.transformers import predict_probabilities

    result = run("scan", str(small_csv), "--model", str(models["classifier"]), "--json")
    assert result.exit_code == 0, result.stderr
    data = result.json()
    assert data["model"] == str(models["classifier"]) and data["total"] == 120
    view = load(SourceSpec(str(small_csv)))
    texts, _ = view.text_lists()
    expected = predict_probabilities(texts, None, model=str(models["classifier"]),
                                     label_names=view.label_names).probs
    from labelfix.store import Store, resolve_url
    from labelfix.store import probabilities as stored
    from labelfix.store.models import ProbabilitySet

    with Store(resolve_url(db)).session() as session:
        matrix = stored.load(session, session.query(ProbabilitySet).one())
    np.testing.assert_allclose(matrix, expected, atol=1e-5)
    again = run("scan", str(small_csv), "--model", str(models["classifier"]))
    assert "Reusing the probabilities" in again.stderr
    with sqlite3.connect(db) as connection:
        assert connection.execute("select count(*) from probability_sets").fetchone()[0] == 1


def test_label_map_and_its_errors(run, db: Path, small_csv: Path,
                                  models: dict[str, Path]) -> None:
    mismatch = run("scan", str(small_csv), "--model", str(models["renamed"]))
    assert mismatch.exit_code == 2
    assert "--label-map" in mismatch.stderr and "Business" in mismatch.stderr
    assert not db_exists_with_data(db)
    mapped = run("scan", str(small_csv), "--model", str(models["renamed"]), "--label-map",
                 "b=Business,s=SciTech,sp=Sports,w=World", "--json")
    assert mapped.exit_code == 0, mapped.stderr


@pytest.mark.parametrize("case, message", [
    ("not a model", "not"),
    ("fewer labels", "the model has 3 labels"),
    ("cuda", "cuda"),
])
def test_bad_model_input_is_one_line_exit_2_and_writes_nothing(
    run, db: Path, small_csv: Path, models: dict[str, Path], tmp_path: Path, case: str,
    message: str,
) -> None:
    import torch

    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    (tmp_path / "empty").mkdir()
    args = {
        "not a model": ["--model", str(tmp_path / "empty")],
        "fewer labels": ["--model", str(models["three"])],
        "cuda": ["--model", str(models["classifier"]), "--device", "cuda"],
    }[case]
    result = run("scan", str(small_csv), *args)
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr.lower() or message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert not db_exists_with_data(db)


def test_embed_gives_out_of_fold_probabilities_and_caches_embeddings(
    run, db: Path, small_csv: Path, models: dict[str, Path]
) -> None:
    first = run("scan", str(small_csv), "--embed", str(models["encoder"]), "--folds", "3",
                "--json")
    assert first.exit_code == 0, first.stderr
    assert first.json()["model"] == f"embed:{models['encoder']} (3-fold)"
    other_folds = run("scan", str(small_csv), "--embed", str(models["encoder"]), "--folds", "4")
    assert other_folds.exit_code == 0, other_folds.stderr
    assert "Reusing the stored embeddings" in other_folds.stderr
    with sqlite3.connect(db) as connection:
        kinds = [r[0] for r in connection.execute(
            "select source_key from probability_sets order by id")]
    assert sum(k.startswith("embeddings|") and "logreg" not in k for k in kinds) == 1
    assert sum("logreg:folds=3" in k for k in kinds) == 1
    assert sum("logreg:folds=4" in k for k in kinds) == 1


def test_only_one_source_of_probabilities(run, small_csv: Path, models: dict[str, Path],
                                          probs_npy: Path) -> None:
    result = run("scan", str(small_csv), "--model", str(models["classifier"]), "--embed",
                 str(models["encoder"]))
    assert result.exit_code == 2
    assert "--model and --embed" in result.stderr
