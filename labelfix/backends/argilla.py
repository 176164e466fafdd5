"""Argilla 2.x over its v1 REST API: datasets with fields, a label question, suggestions and
responses.

Not the ``argilla`` SDK: it drops the response timestamps that history needs, and fails to
import without an undeclared dependency (see shared/reference/argilla_api.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from labelfix.backends.base import (
    PullBatch,
    PushItem,
    Verdict,
    push_batch_size,
    verdict_time,
)
from labelfix.backends.http import BackendError, HttpClient, HttpSettings
from labelfix.errors import UsageError

DEFAULT_URL = "http://localhost:6900"
DEFAULT_KEY = "argilla.apikey"
BATCH_SIZE = 500
PAGE_SIZE = 500
QUESTION = "label"
GUIDELINES = (
    "Each record is a row that a model suspects of a wrong label. The given label is shown "
    "above the text, the model's choice is preselected as a suggestion.\n\n"
    "Is the given label right? If yes, choose it and submit. If not, choose the right one. "
    "Discard the record if no label fits."
)
METADATA = (
    ("given_label", {"type": "terms", "values": None}),
    ("suggested_label", {"type": "terms", "values": None}),
    ("label_quality", {"type": "float", "min": None, "max": None}),
    ("row", {"type": "integer", "min": None, "max": None}),
    ("audit_id", {"type": "integer", "min": None, "max": None}),
)


class ArgillaBackend:
    """Push candidates as records of a published dataset; pull submitted/discarded responses."""

    name = "argilla"

    def __init__(self, *, api_url: str, api_key: str, workspace: str | None = None,
                 settings: HttpSettings | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        self.workspace = workspace
        self._http = HttpClient("argilla", self.api_url, headers={"X-Argilla-Api-Key": api_key},
                                settings=settings)
        self._datasets: dict[str, dict[str, Any]] = {}
        self._usernames: dict[str, str] = {}
        self._may_read_users = True

    @classmethod
    def from_env(cls, *, settings: HttpSettings | None = None) -> ArgillaBackend:
        """Configured like the argilla client: ARGILLA_API_URL, ARGILLA_API_KEY,
        ARGILLA_WORKSPACE (optional when the key's user has one workspace)."""
        return cls(
            api_url=os.environ.get("ARGILLA_API_URL") or DEFAULT_URL,
            api_key=os.environ.get("ARGILLA_API_KEY") or DEFAULT_KEY,
            workspace=os.environ.get("ARGILLA_WORKSPACE") or None, settings=settings,
        )

    def close(self) -> None:
        self._http.close()

    # -- setup -------------------------------------------------------------------------------

    def _workspace_id(self) -> str:
        answer = self._http.request_json("GET", "/api/v1/me/workspaces") or {}
        workspaces = {w["name"]: w["id"] for w in answer.get("items", [])}
        if self.workspace is None:
            if len(workspaces) == 1:
                return next(iter(workspaces.values()))
            raise UsageError("set ARGILLA_WORKSPACE to one of your workspaces: "
                             + (", ".join(sorted(workspaces)) or "(none)"))
        if self.workspace not in workspaces:
            raise UsageError(f"ARGILLA_WORKSPACE={self.workspace!r} is not one of your "
                             f"workspaces ({', '.join(sorted(workspaces)) or 'none'})")
        return workspaces[self.workspace]

    def _find(self, remote_name: str) -> dict[str, Any] | None:
        workspace_id = self._workspace_id()
        answer = self._http.request_json("GET", "/api/v1/me/datasets") or {}
        for dataset in answer.get("items", []):
            if dataset["name"] == remote_name and dataset["workspace_id"] == workspace_id:
                return dataset
        return None

    def _dataset(self, remote_name: str, *, label_names: Sequence[str] | None,
                 pairs: bool = False) -> dict[str, Any]:
        """The dataset with its question id: created and published on first use, checked after.

        Raises:
            BackendError: it exists with other settings, or does not exist when pulling.
        """
        if remote_name in self._datasets:
            return self._datasets[remote_name]
        dataset = self._find(remote_name)
        if dataset is None:
            if label_names is None:
                raise BackendError(f"argilla at {self.api_url}: there is no dataset "
                                   f"{remote_name!r} to pull from; push candidates first")
            dataset = self._create(remote_name, label_names=label_names, pairs=pairs)
        setup = self._check(dataset, label_names=label_names, pairs=pairs)
        self._datasets[remote_name] = setup
        return setup

    def _create(self, remote_name: str, *, label_names: Sequence[str], pairs: bool
                ) -> dict[str, Any]:
        workspace_id = self._workspace_id()
        dataset = self._http.request_json(
            "POST", "/api/v1/datasets", json_body={"name": remote_name,
                                                   "workspace_id": workspace_id})
        base = f"/api/v1/datasets/{dataset['id']}"
        self._http.request_json("PATCH", base, json_body={
            "guidelines": GUIDELINES, "allow_extra_metadata": False,
            "distribution": {"strategy": "overlap", "min_submitted": 1},
        })
        fields = [("given_label", "Given label"), ("text", "Text")]
        if pairs:
            fields.append(("text_pair", "Second text"))
        for name, title in fields:
            self._http.request_json("POST", f"{base}/fields", json_body={
                "name": name, "title": title, "required": name != "given_label",
                "settings": {"type": "text", "use_markdown": False},
            })
        self._http.request_json("POST", f"{base}/questions", json_body={
            "name": QUESTION, "title": "Which label is right?",
            "description": "Keep the given label if it is right; discard if no label fits.",
            "required": True,
            "settings": {"type": "label_selection", "visible_options": None,
                         "options": [{"text": n, "value": n} for n in label_names]},
        })
        for name, settings in METADATA:
            self._http.request_json("POST", f"{base}/metadata-properties", json_body={
                "name": name, "title": name.replace("_", " "), "settings": settings,
                "visible_for_annotators": True,
            })
        return self._http.request_json("PUT", f"{base}/publish")

    def _check(self, dataset: dict[str, Any], *, label_names: Sequence[str] | None,
               pairs: bool) -> dict[str, Any]:
        base = f"/api/v1/datasets/{dataset['id']}"
        fields = {f["name"] for f in (self._http.request_json("GET", f"{base}/fields") or {})
                  .get("items", [])}
        questions = {q["name"]: q for q in (self._http.request_json("GET", f"{base}/questions")
                                            or {}).get("items", [])}
        question = questions.get(QUESTION)
        options = [o["value"] for o in (question or {}).get("settings", {}).get("options", [])]
        wanted = {"text", "given_label"} | ({"text_pair"} if pairs else set())
        problems = []
        if not wanted <= fields:
            problems.append(f"fields {sorted(fields)} lack {sorted(wanted - fields)}")
        if question is None:
            problems.append(f"no question named {QUESTION!r}")
        elif label_names is not None and options != list(label_names):
            problems.append(f"label options {options} are not {list(label_names)}")
        if dataset.get("status") != "ready":
            problems.append(f"it is {dataset.get('status')}, not published")
        if problems:
            raise BackendError(
                f"argilla at {self.api_url}: dataset {dataset['name']!r} exists with other "
                f"settings ({'; '.join(problems)}); labelfix leaves it alone, pass --remote-name "
                "to use another dataset"
            )
        return {"id": dataset["id"], "question_id": question["id"] if question else None,
                "pairs": "text_pair" in fields}

    # -- push and pull -----------------------------------------------------------------------

    def push(self, items: Sequence[PushItem], *, remote_name: str,
             label_names: Sequence[str]) -> Iterator[list[str]]:
        pairs = any(item.text_pair is not None for item in items)
        setup = self._dataset(remote_name, label_names=label_names, pairs=pairs)
        path = f"/api/v1/datasets/{setup['id']}/records/bulk"
        size = min(push_batch_size(BATCH_SIZE), 500)  # the server takes 500 at most
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            body = {"items": [_record(item, setup) for item in chunk]}
            self._http.request_json("PUT", path, json_body=body)
            yield [item.remote_id for item in chunk]

    def pull(self, *, remote_name: str, since: str | None) -> PullBatch:
        setup = self._dataset(remote_name, label_names=None)
        path = f"/api/v1/datasets/{setup['id']}/records/search"
        body = {"query": None, "filters": {"type": "and", "and": [{
            "type": "terms", "values": ["submitted", "discarded"],
            "scope": {"entity": "response", "question": None, "property": "status"},
        }]}}
        verdicts: list[Verdict] = []
        cursor = since
        offset = 0
        while True:
            answer = self._http.request_json(
                "POST", path, json_body=body,
                params=[("offset", offset), ("limit", PAGE_SIZE), ("include", "responses")],
            ) or {}
            items = answer.get("items", [])
            for item in items:
                record = item.get("record", item)
                for response in record.get("responses") or []:
                    verdict = self._verdict(record, response)
                    # A record's own updated_at does not move when people answer: each
                    # response's updated_at is what tells new verdicts from old ones.
                    if verdict is None or (since is not None and verdict.cursor < since):
                        continue
                    verdicts.append(verdict)
                    if cursor is None or verdict.cursor > cursor:
                        cursor = verdict.cursor
            offset += len(items)
            if len(items) < PAGE_SIZE or offset >= int(answer.get("total", offset)):
                break
        return PullBatch(verdicts=verdicts, cursor=cursor)

    def _verdict(self, record: dict[str, Any], response: dict[str, Any]) -> Verdict | None:
        status = response.get("status")
        if status not in ("submitted", "discarded") or not record.get("external_id"):
            return None
        value = ((response.get("values") or {}).get(QUESTION) or {}).get("value")
        discarded = status == "discarded"
        if not discarded and value is None:
            return None
        updated = str(response.get("updated_at") or response.get("inserted_at") or "")
        return Verdict(
            remote_id=str(record["external_id"]),
            label=None if discarded else str(value),
            discarded=discarded,
            annotator=self._username(str(response.get("user_id"))),
            annotated_at=verdict_time(updated, server="argilla", record=record.get("external_id")),
            verdict_key=f"{response.get('id')}|{status}|{value}|{updated}",
            cursor=updated,
        )

    def _username(self, user_id: str) -> str:
        """The annotator's username where the key may read users (owners), else their id."""
        if user_id in self._usernames:
            return self._usernames[user_id]
        name = user_id
        if self._may_read_users:
            try:
                user = self._http.request_json("GET", f"/api/v1/users/{user_id}") or {}
                # The body also carries that user's API key: only the username is kept.
                name = str(user.get("username") or user_id)
            except BackendError:
                self._may_read_users = False
        self._usernames[user_id] = name
        return name


def _record(item: PushItem, setup: dict[str, Any]) -> dict[str, Any]:
    fields = {"given_label": item.given_label, "text": item.text}
    if setup["pairs"]:
        fields["text_pair"] = item.text_pair or ""
    score = item.probabilities.get(item.suggested_label, 0.0)
    return {
        "external_id": item.remote_id,
        "fields": fields,
        "metadata": {
            "given_label": item.given_label, "suggested_label": item.suggested_label,
            "label_quality": float(round(item.label_quality, 6)), "row": int(item.row),
            "audit_id": int(item.audit_id),
        },
        "suggestions": [{
            "question_id": setup["question_id"], "type": "model", "value": item.suggested_label,
            "score": float(min(1.0, max(0.0, score))), "agent": item.source[:200],
        }],
    }


