"""Confident learning with cleanlab: which rows are label-error candidates, and in what order.

Pure functions over arrays: no I/O, no store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from labelfix.errors import UsageError

FILTER_BY = (
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
    "low_normalized_margin",
    "low_self_confidence",
)
RANK_BY = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
DEFAULT_FILTER_BY = "prune_by_noise_rate"
DEFAULT_RANK_BY = "self_confidence"

# Above this many bytes of probability matrix a scan switches to the batched estimate.
# cleanlab's exact path holds several N x K temporaries at once (copies for the confident
# joint, the pruning and the ranking), so its peak is a multiple of the matrix; 2 GB of float32
# is 500 million cells, e.g. 10 million rows of 50 classes.
DEFAULT_LOW_MEMORY_ABOVE = 2 * 1024**3
LOW_MEMORY_ENV = "LABELFIX_LOW_MEMORY_ABOVE"
# Rows per chunk of the batched estimate: 100k rows of 1,000 classes is 400 MB of float32.
LOW_MEMORY_BATCH_ROWS = 100_000
APPROXIMATION = "cleanlab.experimental.label_issues_batched"
_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
          "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4}


@dataclass(frozen=True)
class Detection:
    """What confident learning found.

    ``approximation`` is None for the exact result, else a description of the estimate used
    (see :func:`find_candidates_low_memory`).

    ``ranked`` holds the candidates' row indices, most likely error first (exactly what
    ``cleanlab.filter.find_label_issues(..., return_indices_ranked_by=rank_by)`` returns);
    ``label_quality`` is ``(N,) float64`` for every row (lower is more suspect);
    ``suggested`` is ``(N,) int64``, the most probable class of each row.
    """

    ranked: np.ndarray
    label_quality: np.ndarray
    suggested: np.ndarray
    accuracy: float
    approximation: str | None = None


def check_options(*, filter_by: str, rank_by: str) -> None:
    """Raises UsageError naming the valid choices when an option is not one of cleanlab's."""
    if filter_by not in FILTER_BY:
        raise UsageError(f"--filter-by {filter_by!r} is not one of {', '.join(FILTER_BY)}")
    if rank_by not in RANK_BY:
        raise UsageError(f"--rank-by {rank_by!r} is not one of {', '.join(RANK_BY)}")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def find_candidates(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    *,
    filter_by: str = DEFAULT_FILTER_BY,
    rank_by: str = DEFAULT_RANK_BY,
) -> Detection:
    """Run cleanlab's confident learning and score every row.

    Args:
        labels: (N,) int64 given labels in ``range(K)``.
        pred_probs: (N, K) float32 out-of-sample predicted probabilities, rows summing to 1.

    Raises:
        UsageError: ``filter_by`` or ``rank_by`` is not a cleanlab choice.
    """
    from cleanlab import rank
    from cleanlab.filter import find_label_issues

    check_options(filter_by=filter_by, rank_by=rank_by)
    # n_jobs given explicitly: without psutil cleanlab would print a hint to stdout on large
    # inputs, which would corrupt --json output.
    mask = find_label_issues(labels, pred_probs, filter_by=filter_by, n_jobs=_cpu_count())
    # The scorer that rank.get_label_quality_scores dispatches to, called directly: the inputs
    # were just validated by find_label_issues, and validating again costs a Python loop over
    # every label (0.4 s a million rows).
    scorer = {
        "self_confidence": rank.get_self_confidence_for_each_label,
        "normalized_margin": rank.get_normalized_margin_for_each_label,
        "confidence_weighted_entropy": rank.get_confidence_weighted_entropy_for_each_label,
    }[rank_by]
    quality = scorer(labels, pred_probs)
    # The same ordering cleanlab's rank.order_label_issues applies to the same mask.
    indices = np.arange(len(labels))[mask]
    ranked = indices[np.argsort(quality[mask])]
    suggested = pred_probs.argmax(axis=1).astype(np.int64)
    accuracy = float((suggested == labels).mean()) if len(labels) else 0.0
    return Detection(ranked=ranked, label_quality=np.asarray(quality, dtype=np.float64),
                     suggested=suggested, accuracy=accuracy)


def parse_size(text: str, *, option: str = "--low-memory-above") -> int:
    """Bytes from ``"2GB"``, ``"512MiB"``, ``"1.5 GB"`` or a plain number of bytes.

    Raises:
        UsageError: not a non-negative size.
    """
    import re

    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise UsageError(f"{option} {text!r}: not a size; give bytes or e.g. 500MB, 2GB, 1GiB")
    return int(float(match.group(1)) * _UNITS[unit])


def low_memory_threshold(value: str | None = None) -> int:
    """The matrix size in bytes above which scans use the batched estimate: ``value``, else
    the environment's LABELFIX_LOW_MEMORY_ABOVE, else DEFAULT_LOW_MEMORY_ABOVE.

    Raises:
        UsageError: a value that is not a size.
    """
    if value is not None:
        return parse_size(value)
    configured = os.environ.get(LOW_MEMORY_ENV)
    if configured:
        return parse_size(configured, option=LOW_MEMORY_ENV)
    return DEFAULT_LOW_MEMORY_ABOVE


def find_candidates_low_memory(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    *,
    rank_by: str = DEFAULT_RANK_BY,
    batch_rows: int = LOW_MEMORY_BATCH_ROWS,
) -> Detection:
    """Confident learning in chunks of rows, for matrices too large for the exact path.

    The candidates are those of ``cleanlab.experimental.label_issues_batched.
    find_label_issues_batched`` (an estimate of ``find_label_issues(filter_by=
    "low_self_confidence")``; ``filter_by`` does not apply): the same two passes of its
    ``LabelInspector`` over the same chunks. They are driven here rather than through that
    function because it ends with ``_reduce_issues``, which copies the whole matrix into memory,
    and keeps every score in a Python list; here that last step also runs chunk by chunk.
    Scores, suggestions and the ranking by ``rank_by`` are computed chunk by chunk as in
    :func:`find_candidates`.

    Args:
        labels: (N,) int64 given labels in ``range(K)``.
        pred_probs: (N, K) float32 probabilities; any array that slices by rows, e.g. a
            ``np.load(path, mmap_mode="r")`` memory map, which is read ``batch_rows`` at a time.

    Raises:
        UsageError: ``rank_by`` is not a cleanlab choice, or ``batch_rows`` < 1.
    """
    from cleanlab import rank
    from cleanlab.experimental.label_issues_batched import LabelInspector
    from cleanlab.internal.constants import FLOATING_POINT_COMPARISON

    check_options(filter_by=DEFAULT_FILTER_BY, rank_by=rank_by)
    if batch_rows < 1:
        raise UsageError(f"batch of {batch_rows} rows: must be at least 1")
    n = len(labels)
    if n == 0:
        return Detection(ranked=np.zeros(0, dtype=np.int64),
                         label_quality=np.zeros(0, dtype=np.float64),
                         suggested=np.zeros(0, dtype=np.int64), accuracy=0.0,
                         approximation=APPROXIMATION)
    scorer = {
        "self_confidence": rank.get_self_confidence_for_each_label,
        "normalized_margin": rank.get_normalized_margin_for_each_label,
        "confidence_weighted_entropy": rank.get_confidence_weighted_entropy_for_each_label,
    }[rank_by]
    labels = np.asarray(labels, dtype=np.int64)
    chunks = [(start, min(start + batch_rows, n)) for start in range(0, n, batch_rows)]
    # store_results=False: its scores would be a Python list of N floats (about 32 bytes a
    # row); they go into an array here instead.
    inspector = LabelInspector(num_class=pred_probs.shape[1], store_results=False,
                               verbose=False, n_jobs=_cpu_count())
    for start, stop in chunks:
        inspector.update_confident_thresholds(labels[start:stop],
                                              np.asarray(pred_probs[start:stop]))
    batched_scores = np.empty(n, dtype=np.float64)
    quality = np.empty(n, dtype=np.float64)
    suggested = np.empty(n, dtype=np.int64)
    agrees = np.empty(n, dtype=bool)
    for start, stop in chunks:
        given, probs = labels[start:stop], np.array(pred_probs[start:stop])
        batched_scores[start:stop] = inspector.score_label_quality(given, probs)
        quality[start:stop] = scorer(given, probs)
        suggested[start:stop] = probs.argmax(axis=1)
        # cleanlab's _reduce_issues on this chunk: a row whose given label is (within float
        # tolerance) its most probable one is never an issue.
        probs[np.arange(len(given)), given] += FLOATING_POINT_COMPARISON
        agrees[start:stop] = probs.argmax(axis=1) == given
    issues = rank.find_top_issues(batched_scores, top=inspector.get_num_issues(silent=True))
    mask = np.zeros(n, dtype=bool)
    mask[issues] = True
    mask[agrees] = False
    indices = np.flatnonzero(mask)
    ranked = indices[np.argsort(quality[mask], kind="stable")]
    accuracy = float((suggested == labels).mean())
    return Detection(ranked=ranked, label_quality=quality, suggested=suggested,
                     accuracy=accuracy, approximation=APPROXIMATION)


def preload() -> None:
    """Import cleanlab in a background thread, so that its two seconds of imports overlap the
    reading and hashing of the data instead of following them."""
    import threading

    def load() -> None:
        try:
            import cleanlab.filter  # noqa: F401
            import cleanlab.rank  # noqa: F401
        except Exception:  # noqa: BLE001 -- the real import later reports any problem
            pass

    threading.Thread(target=load, name="labelfix-preload-cleanlab", daemon=True).start()


def library_version() -> str:
    from importlib.metadata import version

    return version("cleanlab")
