"""Rubrix (and Argilla 1.x) over its REST API, as the tutorial logged records with ``rb.log``.

The ``rubrix`` package cannot be installed beside current libraries (see DESIGN.md), so this
speaks the API of Rubrix 0.18 directly. Argilla 1.x serves the same API under ``X-Argilla-*``
headers; which one a server is comes from ``GET /api/_info`` unless given.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from labelfix.backends.base import (
    PullBatch,
    PushItem,
    Verdict,
    push_batch_size,
    verdict_time,
)
from labelfix.backends.http import BackendError, HttpClient, HttpSettings
from labelfix.errors import UsageError

CHUNK_SIZE = 500
PAGE_SIZE = 1000
DEFAULT_URL = "http://localhost:6900"
DEFAULT_KEY = "rubrix.apikey"
GIVEN_LABEL_AGENT = "original_benchmark"
HEADER_STYLES = ("rubrix", "argilla")


class RubrixBackend:
    """Push candidates as TextClassification records; pull Validated and Discarded ones."""

    name = "rubrix"

    def __init__(
        self,
        *,
        api_url: str,
        api_key: str,
        workspace: str | None = None,
        header_style: str | None = None,
        settings: HttpSettings | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self._settings = settings or HttpSettings()
        if header_style is None:
            header_style = self._detect_style()
        if header_style not in HEADER_STYLES:
            raise UsageError(f"--legacy-headers {header_style!r}: choose rubrix or argilla")
        prefix = "X-Rubrix" if header_style == "rubrix" else "X-Argilla"
        headers = {f"{prefix}-Api-Key": api_key}
        if workspace:
            headers[f"{prefix}-Workspace"] = workspace
        self.header_style = header_style
        self.workspace = workspace
        self._http = HttpClient("rubrix", self.api_url, headers=headers, settings=self._settings)

    @classmethod
    def from_env(cls, *, settings: HttpSettings | None = None,
                 header_style: str | None = None) -> RubrixBackend:
        """Configured like the rubrix client: RUBRIX_API_URL, RUBRIX_API_KEY, RUBRIX_WORKSPACE."""
        return cls(
            api_url=os.environ.get("RUBRIX_API_URL") or DEFAULT_URL,
            api_key=os.environ.get("RUBRIX_API_KEY") or DEFAULT_KEY,
            workspace=os.environ.get("RUBRIX_WORKSPACE") or None,
            header_style=header_style, settings=settings,
        )

    def _detect_style(self) -> str:
        with HttpClient("rubrix", self.api_url, headers={}, settings=self._settings) as probe:
            info = probe.request_json("GET", "/api/_info") or {}
        if "rubrix_version" in info:
            return "rubrix"
        if "version" in info:
            return "argilla"
        raise BackendError(f"rubrix at {self.api_url}: GET /api/_info answered {info!r}, "
                           "which is neither Rubrix nor Argilla 1.x; check RUBRIX_API_URL")

    def close(self) -> None:
        self._http.close()

    def push(self, items: Sequence[PushItem], *, remote_name: str,
             label_names: Sequence[str]) -> Iterator[list[str]]:
        path = f"/api/datasets/{quote(remote_name)}/TextClassification:bulk"
        now = datetime.now(timezone.utc).replace(tzinfo=None).isoformat(timespec="milliseconds")
        size = push_batch_size(CHUNK_SIZE)
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            body = {
                "tags": {"source": "labelfix"},
                "metadata": {},
                "records": [_record(item, now) for item in chunk],
            }
            answer = self._http.request_json("POST", path, json_body=body) or {}
            failed = answer.get("failed", 0)
            if failed:
                raise BackendError(f"rubrix at {self.api_url}: POST {path} stored "
                                   f"{answer.get('processed')} records and failed {failed}")
            yield [item.remote_id for item in chunk]

    def pull(self, *, remote_name: str, since: str | None) -> PullBatch:
        path = f"/api/datasets/{quote(remote_name)}/TextClassification/data"
        query: dict[str, Any] = {"status": ["Validated", "Discarded"]}
        if since:
            # Inclusive: a record updated in the same millisecond as the cursor is pulled
            # again and recognised by its verdict key rather than missed.
            query["query_text"] = f"last_updated:[{since} TO *]"
        verdicts: list[Verdict] = []
        cursor = since
        id_from: str | None = None
        while True:
            params: dict[str, Any] = {"limit": PAGE_SIZE}
            if id_from is not None:
                params["id_from"] = id_from
            records = self._http.stream_ndjson("POST", path, json_body=query, params=params)
            for record in records:
                verdict = _verdict(record)
                if verdict is not None:
                    verdicts.append(verdict)
                    if cursor is None or verdict.cursor > cursor:
                        cursor = verdict.cursor
            if len(records) < PAGE_SIZE:
                break
            id_from = str(records[-1]["id"])
        return PullBatch(verdicts=verdicts, cursor=cursor)


def _record(item: PushItem, event_timestamp: str) -> dict[str, Any]:
    inputs = {"text": item.text}
    if item.text_pair is not None:
        inputs["text_pair"] = item.text_pair
    return {
        "id": item.remote_id,
        "inputs": inputs,
        "prediction": {
            "agent": item.source[:64],
            "labels": [{"class": label, "score": float(score)}
                       for label, score in item.probabilities.items()],
        },
        "annotation": {
            "agent": GIVEN_LABEL_AGENT,
            "labels": [{"class": item.given_label, "score": 1.0}],
        },
        # Explicit: the rubrix client would mark a record with an annotation Validated.
        "status": "Default",
        "multi_label": False,
        "metadata": {
            "row": item.row,
            "audit_id": item.audit_id,
            "label_quality": round(item.label_quality, 6),
            "given_label": item.given_label,
            "suggested_label": item.suggested_label,
        },
        "event_timestamp": event_timestamp,
    }


def _verdict(record: dict[str, Any]) -> Verdict | None:
    status = record.get("status")
    if status not in ("Validated", "Discarded"):
        return None
    updated = str(record.get("last_updated") or record.get("event_timestamp") or "")
    annotation = record.get("annotation") or {}
    labels = annotation.get("labels") or []
    label = labels[0].get("class") if labels else None
    agent = annotation.get("agent") or "unknown"
    discarded = status == "Discarded"
    if not discarded and label is None:
        return None  # validated with no label: nothing a person decided
    return Verdict(
        remote_id=str(record["id"]),
        label=None if discarded else str(label),
        discarded=discarded,
        annotator=str(agent),
        annotated_at=verdict_time(updated, server="rubrix", record=record.get("id")),
        verdict_key=f"{record['id']}|{status}|{label}|{agent}|{updated}",
        cursor=updated,
    )


