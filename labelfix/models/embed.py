"""Embeddings and cross-validated probabilities: the engine behind ``scan --embed``.

Any transformers encoder (sentence-transformers checkpoints included) turns each row into the
mean of its token vectors over the attention mask, L2-normalised. A logistic regression trained
on the other folds then predicts each row, so no row is scored by a model that saw its label:
out-of-fold probabilities are what label-error detection needs.

Batching, tokenizing and loading are shared with ``labelfix.models.transformers``. torch,
transformers and scikit-learn are imported inside the functions that use them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from labelfix.errors import UsageError
from labelfix.events import Event, EventCallback, Task, ignore
from labelfix.models.transformers import (
    check_batch_options,
    check_precision,
    check_texts,
    load_model,
    open_model,
    reduce_precision,
    resolve_device,
    resolve_max_length,
    run_engine,
    tokenize,
)

if TYPE_CHECKING:
    import torch

# Inverse regularisation of the logistic regression. On AG News test embedded with
# all-MiniLM-L6-v2, 5-fold accuracy was flat around C=1 (88.2% at 0.3 and 1, 88.1% at 2,
# 88.0% at 3) and fell with weaker regularisation (87.4% at 10, 86.1% at 100).
LOGREG_C = 1.0
# sklearn's default of 100 iterations can stop lbfgs short on hundreds of dense dimensions; a
# fold that still does not converge within this margin is reported as a warning.
LOGREG_MAX_ITER = 2000
POOLING = "mean-l2"


@dataclass(frozen=True)
class Embeddings:
    """Sentence embeddings of N rows.

    Attributes:
        vectors: ``(N, D) float32``, rows of unit L2 norm, in input order.
        model: the hub id or folder as given.
        revision: the resolved commit hash for a hub model when known, else the revision
            given, else None.
        source_key: stable identifier of what produced ``vectors`` (weights, max_length,
            precision, pooling), for caching.
    """

    vectors: np.ndarray
    model: str
    revision: str | None
    source_key: str


def embed_texts(
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    *,
    model: str,
    revision: str | None = None,
    batch_size: int | None = None,
    max_length: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    on_event: EventCallback = ignore,
) -> Embeddings:
    """Embed every row with a transformers encoder: mean pooling, then L2 normalisation.

    Args:
        texts: N texts.
        pairs: N second texts, encoded together with the first as one sequence, or None.
        model: a Hugging Face hub id or a folder written by ``save_pretrained``.
        revision: branch, tag or commit of a hub model.
        batch_size: rows per batch; None sizes batches by a token budget.
        max_length: truncation length in tokens; None uses the model's own limit.
        device: ``cpu``, ``cuda`` or ``auto``.
        precision: ``fp32``, ``bf16`` (bf16 weights on CPU, autocast on CUDA) or ``fp16``
            (CUDA only, autocast).
        on_event: progress ("Tokenizing", "Embedding rows", in rows), info and warnings.

    Returns:
        Embeddings with ``vectors`` of shape ``(N, D) float32``.

    Raises:
        UsageError: bad options, or a path that is not a model.
        DataError: a text that is not a string, or pairs of another length than texts.
        WorkError: a hub model that cannot be downloaded, or a missing package.
    """
    check_batch_options(batch_size=batch_size, max_length=max_length)
    rows, second = check_texts(texts, pairs)
    resolved_device = resolve_device(device)
    check_precision(resolved_device, precision, on_event=on_event)

    loaded = load_model(model, revision=revision, task="encoder", on_event=on_event)
    encoder = loaded.model
    if getattr(loaded.config, "is_encoder_decoder", False):
        # Seq2seq models (T5, BART) need decoder inputs; their encoder alone embeds the text.
        encoder = encoder.get_encoder()
    length = resolve_max_length(loaded.tokenizer, loaded.config, max_length, on_event=on_event)
    encoded = tokenize(
        loaded.tokenizer, encoder, rows, second, max_length=length, on_event=on_event
    )
    encoder = reduce_precision(
        encoder.to(resolved_device), device=resolved_device, precision=precision
    )
    vectors = run_engine(
        encoder,
        encoded,
        mean_pool_forward,
        tokenizer=loaded.tokenizer,
        device=resolved_device,
        precision=precision,
        batch_size=batch_size,
        task="Embedding rows",
        on_event=on_event,
    )
    if not rows:
        width = getattr(loaded.config, "hidden_size", None) or getattr(loaded.config, "d_model", 0)
        vectors = np.zeros((0, width), dtype=np.float32)
    return Embeddings(
        vectors=vectors,
        model=model,
        revision=loaded.revision,
        source_key=_source_key(loaded.source, length, precision),
    )


def embedding_source_key(
    model: str,
    *,
    revision: str | None = None,
    max_length: int | None = None,
    precision: str = "fp32",
    on_event: EventCallback = ignore,
) -> str:
    """The ``source_key`` that ``embed_texts`` would return, without loading the weights.

    Lets a cache be looked up before the (slow) embedding. For a hub id it resolves the
    revision, which needs the hub or a cached copy of the model.

    Raises:
        UsageError: a path that is not a model, or a max_length above the model's limit.
        WorkError: a hub model that cannot be reached.
    """
    check_batch_options(batch_size=None, max_length=max_length)
    reference = open_model(model, revision=revision, on_event=on_event)
    length = resolve_max_length(
        reference.tokenizer, reference.config, max_length, on_event=on_event
    )
    return _source_key(reference.source, length, precision)


def mean_pool_forward(net: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean of the last hidden states over the attention mask, L2-normalised: ``(b, D)``.

    Pooling runs in float32 even under autocast, so bf16 only affects the encoder itself.
    """
    import torch

    hidden = net(**inputs).last_hidden_state.float()
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


def out_of_fold_probabilities(
    vectors: np.ndarray,
    labels: np.ndarray,
    *,
    n_classes: int,
    folds: int = 5,
    seed: int = 0,
    on_event: EventCallback = ignore,
) -> np.ndarray:
    """Cross-validated class probabilities from a logistic regression on the vectors.

    Rows are split by ``StratifiedKFold(folds, shuffle=True, random_state=seed)``; each fold is
    predicted by ``LogisticRegression(C=LOGREG_C, max_iter=LOGREG_MAX_ITER)`` trained on the
    other folds, so no row's probabilities come from a model that saw it.

    Args:
        vectors: ``(N, D)`` float features, e.g. ``Embeddings.vectors``.
        labels: ``(N,)`` integer class indices in ``[0, n_classes)``.
        n_classes: K, the number of classes; classes without rows get a column of zeros.
        folds: number of folds, at least 2.
        seed: seed of the fold split.
        on_event: progress ("Cross-validating", in folds) and warnings.

    Returns:
        ``(N, K) float32`` probabilities, rows summing to 1.

    Raises:
        UsageError: fewer than 2 folds, labels outside ``[0, n_classes)``, mismatched shapes,
            fewer than two classes with rows, or a class with fewer rows than folds.
    """
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise UsageError(f"vectors have shape {x.shape}; expected (rows, dimensions)")
    y = _check_labels(labels, n_rows=x.shape[0], n_classes=n_classes)
    if folds < 2:
        raise UsageError(f"--folds {folds}: cross-validation needs at least 2 folds")
    if len(y) == 0:
        return np.zeros((0, n_classes), dtype=np.float32)
    counts = np.bincount(y, minlength=n_classes)
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise UsageError(
            f"only class {present[0]} has rows; out-of-fold probabilities need rows of at "
            "least 2 classes"
        )
    smallest = int(present[np.argmin(counts[present])])
    fewest = int(counts[smallest])
    if fewest < folds:
        if fewest < 2:
            raise UsageError(
                f"class {smallest} has {fewest} row, fewer than the {folds} folds; "
                "cross-validation needs at least 2 rows per class (then use --folds 2): add "
                "rows of that class or drop it"
            )
        raise UsageError(
            f"class {smallest} has {fewest} rows, fewer than the {folds} folds; "
            f"use --folds {fewest} or fewer, or add rows of that class"
        )

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probs = np.zeros((len(y), n_classes), dtype=np.float32)
    unconverged = 0
    with Task(on_event, "Cross-validating", total=folds) as progress:
        for train, test in splitter.split(x, y):
            classifier = LogisticRegression(C=LOGREG_C, max_iter=LOGREG_MAX_ITER, random_state=seed)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                classifier.fit(x[train], y[train])
            unconverged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
            probs[np.ix_(test, classifier.classes_)] = classifier.predict_proba(x[test])
            progress.advance()
    if unconverged:
        on_event(
            Event(
                "warning",
                message=f"the logistic regression did not converge in {LOGREG_MAX_ITER} "
                f"iterations on {unconverged} of {folds} folds; its probabilities may be rough",
            )
        )
    return probs


def _check_labels(labels: np.ndarray, *, n_rows: int, n_classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if n_classes < 2:
        raise UsageError(f"n_classes is {n_classes}; classification needs at least 2 classes")
    if y.ndim != 1 or len(y) != n_rows:
        raise UsageError(f"labels have shape {y.shape} for {n_rows} vectors; give one per row")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.mod(y, 1) == 0):
            raise UsageError(f"labels must be class indices (integers), got {y.dtype}")
    y = y.astype(np.int64)
    outside = np.flatnonzero((y < 0) | (y >= n_classes))
    if outside.size:
        row = int(outside[0])
        raise UsageError(
            f"row {row}: label {y[row]} is outside 0..{n_classes - 1}; labels must be class indices"
        )
    return y


def _source_key(source: str, max_length: int, precision: str) -> str:
    return f"{source}|max_length={max_length}|precision={precision}|pooling={POOLING}"
