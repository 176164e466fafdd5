"""The cross-validated baseline: TF-IDF (word 1-2 grams) + logistic regression, out of fold.

Every row is predicted by a model fitted on the other folds only, because confident learning
needs out-of-sample probabilities: a model that has seen a row has memorised its (wrong) label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from labelfix._hooks import checkpoint
from labelfix.errors import DataError
from labelfix.events import EventCallback, Task, ignore

BASELINE_NAME = "tfidf-logreg"
# Bump when the recipe changes, so stored probabilities of the old recipe are not reused.
RECIPE_VERSION = 1


def source_key(*, folds: int, seed: int) -> str:
    return f"{BASELINE_NAME}:v{RECIPE_VERSION}:folds={folds}:seed={seed}"


def describe(*, folds: int) -> str:
    return f"{BASELINE_NAME} ({folds}-fold)"


def check_folds(labels: np.ndarray, label_names: Sequence[str], *, folds: int) -> None:
    """Refuse fold counts that stratified cross-validation cannot honour.

    Raises:
        DataError: ``folds`` < 2, or a class present in the data has fewer rows than folds.
    """
    if folds < 2:
        raise DataError(f"--folds {folds}: cross-validation needs at least 2 folds")
    counts = np.bincount(labels, minlength=len(label_names))
    short = [(label_names[k], int(c)) for k, c in enumerate(counts) if 0 < c < folds]
    if short:
        shown = ", ".join(f"{name} ({count} rows)" for name, count in short[:5])
        smallest = min(count for _, count in short)
        raise DataError(
            f"--folds {folds}: class {shown} has fewer rows than folds; use --folds "
            f"{max(2, smallest)} or fewer, or pass --probs"
        )


def out_of_fold_probabilities(
    texts: Sequence[str],
    labels: np.ndarray,
    *,
    n_classes: int,
    text_pairs: Sequence[str] | None = None,
    folds: int = 5,
    seed: int = 0,
    on_event: EventCallback = ignore,
) -> np.ndarray:
    """Out-of-fold predicted probabilities of TF-IDF + logistic regression.

    Args:
        texts: N texts; ``text_pairs`` (N texts) are appended with a separator when given.
        labels: (N,) int64 class indices in ``range(n_classes)``.

    Returns:
        (N, n_classes) float32; a class absent from a fold's training rows gets probability 0.

    Raises:
        DataError: too few rows per class for ``folds``.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    if text_pairs is not None:
        texts = [f"{a} [SEP] {b}" for a, b in zip(texts, text_pairs, strict=True)]
    documents = np.asarray(texts, dtype=object)
    probs = np.zeros((len(documents), n_classes), dtype=np.float32)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with Task(on_event, f"Cross-validating ({folds} folds)", total=folds) as task:
        for train, test in splitter.split(documents, labels):
            vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True,
                                         dtype=np.float32)
            x_train = vectorizer.fit_transform(documents[train])
            classifier = LogisticRegression(C=10.0, max_iter=1000)
            classifier.fit(x_train, labels[train])
            fold_probs = classifier.predict_proba(vectorizer.transform(documents[test]))
            probs[np.ix_(test, classifier.classes_)] = fold_probs
            task.advance(1)
            checkpoint("scan.fold")
    return probs
