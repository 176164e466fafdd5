"""The review-backend protocol and the records that cross it."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

from labelfix.errors import UsageError


@dataclass(frozen=True)
class PushItem:
    """One candidate as a review server should show it.

    ``probabilities`` maps every label name to the model's probability, in label order.
    """

    remote_id: str
    row: int
    audit_id: int
    text: str
    text_pair: str | None
    given_label: str
    suggested_label: str
    label_quality: float
    probabilities: dict[str, float]
    source: str


@dataclass(frozen=True)
class Verdict:
    """A person's answer on one remote record, in the server's terms.

    ``label`` is the label they chose (None for a discard); ``verdict_key`` identifies this
    answer on the server, so that the same answer pulled twice is recognised.
    """

    remote_id: str
    label: str | None
    discarded: bool
    annotator: str
    annotated_at: datetime
    verdict_key: str
    cursor: str


@dataclass(frozen=True)
class PullBatch:
    """What a pull returned: the verdicts and the cursor to resume from next time."""

    verdicts: list[Verdict]
    cursor: str | None


class ReviewBackend(Protocol):
    """A place where people review candidates."""

    name: str

    def push(self, items: Sequence[PushItem], *, remote_name: str,
             label_names: Sequence[str]) -> Iterator[list[str]]:
        """Create or update one remote record per item, in batches.

        Yields the remote ids of each batch once the server has accepted it, so that the
        caller can record progress between batches.
        """
        ...

    def pull(self, *, remote_name: str, since: str | None) -> PullBatch:
        """Every verdict on ``remote_name`` changed at or after ``since`` (the server's clock)."""
        ...

    def close(self) -> None:
        ...


REMOTE_NAME_RULE = re.compile(r"^(?!-|_)[a-z0-9-_]+$")


def default_remote_name(dataset: str) -> str:
    """``<dataset>_label_errors``, lower-cased, with characters servers refuse replaced."""
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", dataset.lower()).strip("-_") or "dataset"
    return f"{cleaned}_label_errors"


def check_remote_name(name: str) -> str:
    """Raises UsageError unless ``name`` is a valid remote dataset name."""
    if not REMOTE_NAME_RULE.match(name):
        raise UsageError(f"--remote-name {name!r}: use lower-case letters, digits, '-' and '_', "
                         "not starting with '-' or '_'")
    return name


def remote_id(dataset: str, row: int) -> str:
    """The remote record id of a row: the same for every audit, and never a bare number."""
    return f"{dataset}-{row}"


def push_batch_size(default: int) -> int:
    """Records per push request: LABELFIX_PUSH_BATCH, for servers behind proxies that limit
    request sizes, else the backend's default.

    Raises:
        UsageError: the value is not a whole number from 1 to 10000.
    """
    import os

    raw = os.environ.get("LABELFIX_PUSH_BATCH")
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
        raise UsageError(f"LABELFIX_PUSH_BATCH={raw!r}: use a whole number from 1 to 10000")
    return int(raw)


def verdict_time(value: str, *, server: str, record: object) -> datetime:
    """A verdict's server time, or a BackendError: a verdict without a usable time cannot be
    ordered against the others."""
    from labelfix.backends.http import BackendError

    try:
        return parse_server_time(value)
    except ValueError:
        raise BackendError(f"{server} answered record {record!r} with no usable time "
                           f"({value!r}); its verdict cannot be ordered") from None


def parse_server_time(value: str) -> datetime:
    """A server's ISO 8601 timestamp as an aware datetime (servers that omit the zone mean UTC).

    Raises:
        ValueError: the value is not ISO 8601; a verdict without a usable time cannot be
            ordered against others, so it is refused rather than stamped with our clock.
    """
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
