"""Detection is cleanlab's confident learning, row for row."""

from __future__ import annotations

import numpy as np
import pytest

from labelfix.detect import FILTER_BY, RANK_BY, find_candidates
from labelfix.errors import UsageError
from tests.conftest import make_synthetic


@pytest.mark.parametrize("filter_by", ["prune_by_noise_rate", "prune_by_class", "both",
                                       "confident_learning", "predicted_neq_given"])
@pytest.mark.parametrize("rank_by", RANK_BY)
def test_candidates_are_exactly_cleanlabs(filter_by: str, rank_by: str) -> None:
    from cleanlab.filter import find_label_issues

    data = make_synthetic(600, noise=0.1, seed=3)
    probs = data.probs(confidence=0.7)
    expected = find_label_issues(data.labels, probs, filter_by=filter_by,
                                 return_indices_ranked_by=rank_by)
    found = find_candidates(data.labels, probs, filter_by=filter_by, rank_by=rank_by)
    assert found.ranked.tolist() == expected.tolist()


def test_scores_suggestions_and_accuracy() -> None:
    from cleanlab.rank import get_label_quality_scores

    data = make_synthetic(300, seed=5)
    probs = data.probs()
    found = find_candidates(data.labels, probs)
    np.testing.assert_allclose(found.label_quality, get_label_quality_scores(data.labels, probs))
    assert found.suggested.tolist() == probs.argmax(axis=1).tolist()
    assert found.accuracy == pytest.approx((probs.argmax(axis=1) == data.labels).mean())
    # A good model finds most of the flipped labels, ranked near the top.
    assert len(set(found.ranked.tolist()) & set(data.flipped.tolist())) >= 0.8 * len(data.flipped)


def test_unknown_options_list_the_choices() -> None:
    data = make_synthetic(50)
    with pytest.raises(UsageError, match="prune_by_class"):
        find_candidates(data.labels, data.probs(), filter_by="nope")
    with pytest.raises(UsageError, match="normalized_margin"):
        find_candidates(data.labels, data.probs(), rank_by="nope")
    assert "low_self_confidence" in FILTER_BY
