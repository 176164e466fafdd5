"""``scan --embed``: mean-pooled embeddings and out-of-fold logistic regression."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labelfix.errors import UsageError
from labelfix.events import Event
from labelfix.models.embed import (
    LOGREG_C,
    LOGREG_MAX_ITER,
    Embeddings,
    embed_texts,
    embedding_source_key,
    out_of_fold_probabilities,
)
from tests.tiny_model import FIXTURE_TEXTS, save_tiny_classifier, save_tiny_encoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = [
    *FIXTURE_TEXTS,
    "goal",
    " ".join(FIXTURE_TEXTS * 2),
    "",
    FIXTURE_TEXTS[4] + " " + FIXTURE_TEXTS[7],
]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_encoder(tmp_path_factory.mktemp("models") / "tiny-encoder")


def manual_embeddings(folder: Path, texts: list[str], pairs: list[str] | None = None):
    """Row by row: mean of the last hidden states over real tokens, then unit length."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    rows = []
    with torch.no_grad():
        for i, text in enumerate(texts):
            second = pairs[i] if pairs is not None else None
            inputs = tokenizer(text, second, truncation=True, max_length=128, return_tensors="pt")
            mean = model(**inputs).last_hidden_state[0].mean(dim=0).numpy()
            rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows)


@pytest.mark.parametrize("batch_size", [None, 4])
def test_embeddings_are_unit_length_mean_pools_in_input_order(
    encoder_dir: Path, batch_size: int | None
) -> None:
    events: list[Event] = []
    result = embed_texts(
        TEXTS,
        None,
        model=str(encoder_dir),
        batch_size=batch_size,
        device="cpu",
        on_event=events.append,
    )
    assert isinstance(result, Embeddings)
    assert result.vectors.shape == (len(TEXTS), 32)
    assert result.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    assert np.abs(result.vectors - manual_embeddings(encoder_dir, TEXTS)).max() < 1e-5
    assert sum(e.amount for e in events if e.task == "Embedding rows") == len(TEXTS)
    # A headless checkpoint has no pooler weights; mean pooling does not need them.
    assert not [e for e in events if e.kind == "warning"]


def test_pairs_are_embedded_together(encoder_dir: Path) -> None:
    pairs = [text[::-1] or "nothing" for text in TEXTS]
    result = embed_texts(TEXTS, pairs, model=str(encoder_dir), device="cpu")
    expected = manual_embeddings(encoder_dir, TEXTS, pairs)
    assert np.abs(result.vectors - expected).max() < 1e-5


def test_a_classifier_checkpoint_embeds_with_its_encoder(tmp_path: Path) -> None:
    folder = save_tiny_classifier(tmp_path / "classifier")
    result = embed_texts(TEXTS[:3], None, model=str(folder), device="cpu")
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)


def test_bf16_embeddings_stay_close(encoder_dir: Path) -> None:
    fp32 = embed_texts(TEXTS, None, model=str(encoder_dir), device="cpu").vectors
    bf16 = embed_texts(TEXTS, None, model=str(encoder_dir), device="cpu", precision="bf16")
    assert np.min(np.sum(fp32 * bf16.vectors, axis=1)) > 0.98


def test_source_key_is_known_before_embedding(encoder_dir: Path) -> None:
    result = embed_texts(TEXTS[:2], None, model=str(encoder_dir), device="cpu")
    assert embedding_source_key(str(encoder_dir)) == result.source_key
    assert embedding_source_key(str(encoder_dir), max_length=32) != result.source_key
    assert embedding_source_key(str(encoder_dir), precision="bf16") != result.source_key
    empty = embed_texts([], None, model=str(encoder_dir), device="cpu")
    assert empty.vectors.shape == (0, 32)


def separable_data(seed: int = 0, n_per_class: int = 30, n_classes: int = 3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, 8)) * 3
    labels = np.repeat(np.arange(n_classes), n_per_class)
    vectors = centres[labels] + rng.normal(size=(len(labels), 8))
    return vectors.astype(np.float32), labels


def test_out_of_fold_probabilities_match_a_manual_cross_validation() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    vectors, labels = separable_data()
    events: list[Event] = []
    probs = out_of_fold_probabilities(
        vectors, labels, n_classes=3, folds=4, seed=7, on_event=events.append
    )
    assert probs.shape == (len(labels), 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    expected = np.zeros((len(labels), 3))
    for train, test in StratifiedKFold(4, shuffle=True, random_state=7).split(vectors, labels):
        model = LogisticRegression(C=LOGREG_C, max_iter=LOGREG_MAX_ITER, random_state=7)
        model.fit(vectors[train], labels[train])
        expected[test] = model.predict_proba(vectors[test])
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert (probs.argmax(1) == labels).mean() > 0.9
    folds = [e for e in events if e.task == "Cross-validating"]
    assert folds[0].total == 4
    assert sum(e.amount for e in folds if e.kind == "advance") == 4


def test_no_row_is_predicted_by_a_model_that_saw_it() -> None:
    vectors, labels = separable_data(n_per_class=20, n_classes=2)
    # A mislabelled row whose only distinctive feature is a dimension of its own: a model
    # trained on it memorises that feature and agrees with the wrong label, a model that never
    # saw it predicts the row's true class.
    row = 0
    assert labels[row] == 0
    extra = np.zeros((len(labels), 1), dtype=np.float32)
    extra[row] = 5.0
    vectors = np.hstack([vectors, extra])
    labels = labels.copy()
    labels[row] = 1

    from sklearn.linear_model import LogisticRegression

    in_sample = LogisticRegression(C=LOGREG_C, max_iter=LOGREG_MAX_ITER).fit(vectors, labels)
    assert in_sample.predict_proba(vectors[row : row + 1])[0, 1] > 0.5
    probs = out_of_fold_probabilities(vectors, labels, n_classes=2, folds=5)
    assert probs[row, 1] < 0.1


def test_a_class_without_rows_gets_a_zero_column() -> None:
    vectors, labels = separable_data(n_per_class=10, n_classes=2)
    probs = out_of_fold_probabilities(vectors, labels * 2, n_classes=3, folds=3)
    assert probs.shape == (20, 3)
    assert np.all(probs[:, 1] == 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_small_classes_and_bad_input_are_usage_errors() -> None:
    vectors, labels = separable_data(n_per_class=10, n_classes=3)
    labels = labels.copy()
    labels[:7] = 2  # class 0 keeps 3 rows
    with pytest.raises(UsageError) as caught:
        out_of_fold_probabilities(vectors, labels, n_classes=3, folds=5)
    message = str(caught.value)
    assert "class 0 has 3 rows" in message and "use --folds 3" in message
    assert out_of_fold_probabilities(vectors, labels, n_classes=3, folds=3).shape == (30, 3)

    labels[:9] = 2  # class 0 keeps 1 row
    with pytest.raises(UsageError, match="class 0 has 1 row.*at least 2 rows per class"):
        out_of_fold_probabilities(vectors, labels, n_classes=3, folds=5)
    with pytest.raises(UsageError, match="at least 2 folds"):
        out_of_fold_probabilities(vectors, labels, n_classes=3, folds=1)
    with pytest.raises(UsageError, match="outside 0..1"):
        out_of_fold_probabilities(vectors, labels, n_classes=2)
    with pytest.raises(UsageError, match="one per row"):
        out_of_fold_probabilities(vectors, labels[:5], n_classes=3)
    with pytest.raises(UsageError, match="at least 2 classes"):
        out_of_fold_probabilities(vectors, np.zeros(30, dtype=int), n_classes=3)
