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


@dataclass(frozen=True)
class Detection:
    """What confident learning found.

    ``ranked`` holds the candidates' row indices, most likely error first (exactly what
    ``cleanlab.filter.find_label_issues(..., return_indices_ranked_by=rank_by)`` returns);
    ``label_quality`` is ``(N,) float64`` for every row (lower is more suspect);
    ``suggested`` is ``(N,) int64``, the most probable class of each row.
    """

    ranked: np.ndarray
    label_quality: np.ndarray
    suggested: np.ndarray
    accuracy: float


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
