"""Label Studio over its REST API: a project per remote name, a task per candidate.

The remote name is the project's title. Each candidate becomes a task whose data holds the
text, the given and suggested labels, the label quality, the row, the audit and the remote id
(``labelfix_id``), with one prediction: the given label, scored by its probability, so that the
annotator finds it preselected and changes it only where it is wrong. Verdicts come back through
the project export: a submitted choice is the label a person chose (the sync use case compares
it with the given label), a skipped (cancelled) annotation is a discard, and every annotation is
its own verdict, so several annotators on one task are all kept.

Calls and shapes are those of Label Studio 1.23 (``projects/api.py``, ``data_import/api.py``,
``data_manager/api.py``, ``data_export/api.py``), authenticated with a legacy API token
(``Authorization: Token ...``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any
from xml.sax.saxutils import quoteattr

from labelfix.backends.base import PullBatch, PushItem, Verdict
from labelfix.backends.http import BackendError, HttpClient, HttpSettings
from labelfix.errors import UsageError

CHUNK_SIZE = 500
TASK_PAGE_SIZE = 1000
PROJECT_PAGE_SIZE = 100
MAX_TITLE = 50  # Project.title is a CharField(max_length=50)
DEFAULT_URL = "http://localhost:8080"
SERVER = "label-studio"
# The names of the labeling config's tags: results name them as from_name / to_name.
CHOICES_NAME = "label"
TEXT_NAME = "text"
PAIR_NAME = "text_pair"
MODEL_VERSION = "labelfix-given-label"
INSTRUCTIONS = "Is the given label right? If not, choose the right one; skip if no label fits."
# Label Studio fills $names in a Header from the task data (a variable followed by "." would
# take the dot into its name, so none is).
SUGGESTION = ("Given label: $given_label / model suggests: $suggested_label / "
              "label quality: $label_quality")
# How long an asynchronous import (Label Studio Enterprise) may take before we give up.
IMPORT_WAIT_S = 600.0


class LabelStudioBackend:
    """Push candidates as tasks with the given label preselected; pull annotations back."""

    name = "label-studio"

    def __init__(self, *, url: str, api_key: str, settings: HttpSettings | None = None) -> None:
        if not api_key.strip():
            raise UsageError("LABEL_STUDIO_API_KEY is empty: set it to your Label Studio "
                             "legacy API token (Account & Settings > Legacy Token)")
        if api_key.count(".") == 2 and api_key.startswith("eyJ"):
            # A personal access token is a JWT to exchange for short-lived access tokens;
            # sent as "Token ..." it would only earn a puzzling 401.
            raise UsageError("LABEL_STUDIO_API_KEY holds a personal access token; labelfix "
                             "needs the legacy API token (enable legacy tokens under Organization "
                             "> API Tokens Settings, then copy it from Account & Settings)")
        self.url = url.rstrip("/")
        self._settings = settings or HttpSettings()
        headers = {"Authorization": f"Token {api_key.strip()}"}
        self._http = HttpClient(SERVER, self.url, headers=headers, settings=self._settings)
        # Imports are not idempotent: a retried POST whose first try was stored would make
        # duplicates, so they go out once per try and the tasks are listed between tries.
        self._once = HttpClient(SERVER, self.url, headers=headers,
                                settings=HttpSettings(timeout=self._settings.timeout, attempts=1,
                                                      verify=self._settings.verify))
        self._projects: dict[str, int] = {}

    @classmethod
    def from_env(cls, *, settings: HttpSettings | None = None) -> LabelStudioBackend:
        """Configured like Label Studio's own SDK: LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY.

        Raises:
            UsageError: LABEL_STUDIO_API_KEY is not set, or the URL is not http(s).
        """
        api_key = os.environ.get("LABEL_STUDIO_API_KEY")
        if not api_key:
            raise UsageError("LABEL_STUDIO_API_KEY is not set: export your Label Studio legacy "
                             "API token (Account & Settings > Legacy Token)")
        return cls(url=os.environ.get("LABEL_STUDIO_URL") or DEFAULT_URL, api_key=api_key,
                   settings=settings)

    def close(self) -> None:
        self._http.close()
        self._once.close()

    # ------------------------------------------------------------------ push

    def push(self, items: Sequence[PushItem], *, remote_name: str,
             label_names: Sequence[str]) -> Iterator[list[str]]:
        _check_title(remote_name)
        if not items:
            return
        project_id = self._project_id(remote_name)
        if project_id is None:
            project_id = self._create_project(
                remote_name, label_names, pair=any(i.text_pair is not None for i in items))
        existing = self._task_ids(project_id)
        for start in range(0, len(items), CHUNK_SIZE):
            chunk = items[start : start + CHUNK_SIZE]
            # A task already in the project (an earlier push cut off before it was recorded)
            # is accepted as it is: importing it again would make a duplicate, and its
            # annotations, if any, belong to it.
            self._import(project_id, [i for i in chunk if i.remote_id not in existing],
                         existing)
            yield [item.remote_id for item in chunk]

    def _project_id(self, title: str) -> int | None:
        """The id of the project titled ``title`` (the oldest, if several), or None."""
        if title in self._projects:
            return self._projects[title]
        found: list[int] = []
        page = 1
        while True:
            # The title filter is "contains, any case": the exact match is picked here.
            answer = self._http.request_json("GET", "/api/projects/", params={
                "title": title, "page": page, "page_size": PROJECT_PAGE_SIZE}) or {}
            results = answer.get("results", []) if isinstance(answer, Mapping) else answer
            found += [int(p["id"]) for p in results if p.get("title") == title]
            if not isinstance(answer, Mapping) or not answer.get("next") or not results:
                break
            page += 1
        if not found:
            return None
        # Label Studio allows two projects with one title; always taking the oldest keeps
        # every push and pull on the same one.
        self._projects[title] = min(found)
        return self._projects[title]

    def _create_project(self, title: str, label_names: Sequence[str], *, pair: bool) -> int:
        body = {
            "title": title,
            "description": "Label-error candidates found by labelfix (cleanlab). " + INSTRUCTIONS,
            "label_config": label_config(label_names, pair=pair),
            "expert_instruction": f"<p>{INSTRUCTIONS}</p><p>The given label is preselected; "
                                  "the model's suggestion is shown under the text.</p>",
            "show_instruction": True,
            "show_skip_button": True,
            "is_published": True,
        }
        answer = self._http.request_json("POST", "/api/projects/", json_body=body) or {}
        if "id" not in answer:
            raise BackendError(f"{SERVER} at {self.url}: POST /api/projects/ answered without "
                               f"a project id: {str(answer)[:200]}")
        self._projects[title] = int(answer["id"])
        return self._projects[title]

    def _task_ids(self, project_id: int) -> dict[str, int]:
        """``labelfix_id`` -> task id of every task in the project that labelfix imported."""
        ids: dict[str, int] = {}
        seen = 0
        page = 1
        while True:
            answer = self._http.request_json("GET", "/api/tasks/", params={
                "project": project_id, "page": page, "page_size": TASK_PAGE_SIZE,
                "fields": "task_only", "include": "id,data",
            }) or {}
            tasks = answer.get("tasks") or []
            for task in tasks:
                rid = (task.get("data") or {}).get("labelfix_id")
                if rid is not None:
                    ids.setdefault(str(rid), int(task["id"]))
            seen += len(tasks)
            # Past the last page Label Studio answers 404, so stop by the total.
            if not tasks or seen >= int(answer.get("total") or 0):
                return ids
            page += 1

    def _import(self, project_id: int, items: Sequence[PushItem],
                existing: dict[str, int]) -> None:
        """Import ``items`` as tasks, retrying only what the server did not store."""
        path = f"/api/projects/{project_id}/import"
        attempts = max(1, self._settings.attempts)
        for attempt in range(attempts):
            missing = [i for i in items if i.remote_id not in existing]
            if not missing:
                return
            try:
                answer = self._once.request_json(
                    "POST", path, params={"return_task_ids": "true"},
                    json_body=[_task(item) for item in missing]) or {}
                if "import" in answer and "task_count" not in answer:
                    answer = self._wait_for_import(project_id, int(answer["import"]))
            except BackendError:
                if attempt == attempts - 1:
                    raise
                time.sleep(min(self._settings.backoff * 2**attempt, self._settings.max_backoff))
                existing.update(self._task_ids(project_id))
                continue
            task_ids = answer.get("task_ids") or []
            if len(task_ids) == len(missing):
                existing.update({i.remote_id: int(t) for i, t in zip(missing, task_ids,
                                                                     strict=True)})
                return
            if int(answer.get("task_count") or 0) != len(missing):
                raise BackendError(f"{SERVER} at {self.url}: POST {path} imported "
                                   f"{answer.get('task_count')} of {len(missing)} tasks")
            existing.update(self._task_ids(project_id))  # stored, but no ids came back
            return

    def _wait_for_import(self, project_id: int, import_id: int) -> dict[str, Any]:
        """Poll an asynchronous import (as Label Studio Enterprise runs them) until it ends."""
        path = f"/api/projects/{project_id}/imports/{import_id}/"
        deadline = time.monotonic() + IMPORT_WAIT_S
        while True:
            answer = self._http.request_json("GET", path) or {}
            status = answer.get("status")
            if status == "completed":
                return answer
            if status == "failed":
                raise BackendError(f"{SERVER} at {self.url}: import {import_id} into project "
                                   f"{project_id} failed: {str(answer.get('error'))[:200]}")
            if time.monotonic() > deadline:
                raise BackendError(f"{SERVER} at {self.url}: import {import_id} into project "
                                   f"{project_id} did not finish within {IMPORT_WAIT_S:.0f} s")
            time.sleep(1.0)

    # ------------------------------------------------------------------ pull

    def pull(self, *, remote_name: str, since: str | None) -> PullBatch:
        _check_title(remote_name)
        project_id = self._project_id(remote_name)
        if project_id is None:
            return PullBatch(verdicts=[], cursor=since)  # nothing pushed there yet
        # Without download_all_tasks the export holds only tasks with annotations, skipped
        # ones included; it cannot filter by time, so the cursor is applied here.
        tasks = self._http.request_json("GET", f"/api/projects/{project_id}/export",
                                        params={"exportType": "JSON"}) or []
        after = _parse_time(since) if since else None
        emails: dict[int, str] | None = None
        verdicts: list[Verdict] = []
        cursor = since
        for task in tasks:
            rid = (task.get("data") or {}).get("labelfix_id")
            if rid is None:
                continue  # a task someone else added to the project
            for annotation in task.get("annotations") or []:
                stamp = annotation.get("updated_at") or annotation.get("created_at")
                at = _parse_time(stamp) if stamp else None
                if at is None or (after is not None and at < after):
                    continue  # the boundary itself is pulled again; verdict keys dedupe
                if emails is None:
                    emails = self._annotator_emails(project_id)
                verdict = _verdict(annotation, remote_id=str(rid), at=at, emails=emails)
                if verdict is None:
                    continue
                verdicts.append(verdict)
                if cursor is None or verdict.cursor > cursor:
                    cursor = verdict.cursor
        return PullBatch(verdicts=verdicts, cursor=cursor)

    def _annotator_emails(self, project_id: int) -> dict[int, str]:
        """User id -> email of everyone who annotated in the project."""
        users = self._http.request_json("GET", f"/api/projects/{project_id}/annotators/") or []
        return {int(u["id"]): str(u["email"]) for u in users
                if isinstance(u, Mapping) and u.get("id") is not None and u.get("email")}


def _check_title(title: str) -> None:
    """Raises UsageError for a remote name that cannot be a project title."""
    if len(title) > MAX_TITLE:
        raise UsageError(f"--remote-name {title!r} has {len(title)} characters; Label Studio "
                         f"project titles hold at most {MAX_TITLE}: pass a shorter --remote-name")


def label_config(label_names: Sequence[str], *, pair: bool = False) -> str:
    """The labeling config: the text (and its pair), the labels as single choices.

    The second header is a template that Label Studio fills from each task's data, so the
    model's suggestion is in sight without being preselected.
    """
    choices = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in label_names)
    pair_tag = f'\n  <Text name="{PAIR_NAME}" value="$text_pair"/>' if pair else ""
    return f"""<View>
  <Header value={quoteattr(INSTRUCTIONS)} size="5"/>
  <Text name="{TEXT_NAME}" value="$text"/>{pair_tag}
  <Header value={quoteattr(SUGGESTION)} size="6"/>
  <Choices name="{CHOICES_NAME}" toName="{TEXT_NAME}" choice="single-radio" showInline="true"
           required="true">
{choices}
  </Choices>
</View>"""


def _task(item: PushItem) -> dict[str, Any]:
    data: dict[str, Any] = {
        "text": item.text,
        "given_label": item.given_label,
        "suggested_label": item.suggested_label,
        "label_quality": round(float(item.label_quality), 6),
        "row": item.row,
        "audit_id": item.audit_id,
        "labelfix_id": item.remote_id,
    }
    if item.text_pair is not None:
        data["text_pair"] = item.text_pair
    return {
        "data": data,
        "predictions": [{
            "model_version": MODEL_VERSION,
            "score": round(float(item.probabilities.get(item.given_label, 0.0)), 6),
            "result": [{
                "from_name": CHOICES_NAME, "to_name": TEXT_NAME, "type": "choices",
                "value": {"choices": [item.given_label]},
            }],
        }],
    }


def _verdict(annotation: Mapping[str, Any], *, remote_id: str, at: datetime,
             emails: Mapping[int, str]) -> Verdict | None:
    cancelled = bool(annotation.get("was_cancelled"))
    choice = None if cancelled else _choice(annotation.get("result") or [])
    if not cancelled and choice is None:
        return None  # submitted without a choice: nothing a person decided
    cursor = _format_time(at)
    return Verdict(
        remote_id=remote_id,
        label=choice,
        discarded=cancelled,
        annotator=_annotator(annotation.get("completed_by"), emails),
        annotated_at=at,
        # A changed annotation keeps its id but gets a new updated_at: a new verdict.
        verdict_key=f"{annotation.get('id')}|{cursor}|{'skipped' if cancelled else choice}",
        cursor=cursor,
    )


def _choice(result: Sequence[Any]) -> str | None:
    """The chosen label of an annotation's result: our Choices tag first, any choices else."""
    found: list[str] = []
    for region in result:
        if not isinstance(region, Mapping) or region.get("type") != "choices":
            continue
        picked = (region.get("value") or {}).get("choices") or []
        if not picked:
            continue
        if region.get("from_name") == CHOICES_NAME:
            return str(picked[0])
        found.append(str(picked[0]))
    return found[0] if found else None


def _annotator(completed_by: Any, emails: Mapping[int, str]) -> str:
    if isinstance(completed_by, Mapping):  # an expanded user
        if completed_by.get("email"):
            return str(completed_by["email"])
        completed_by = completed_by.get("id")
    try:
        user_id = int(completed_by)
    except (TypeError, ValueError):
        return "unknown"
    return emails.get(user_id, f"label-studio-user-{user_id}")


def _parse_time(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _format_time(moment: datetime) -> str:
    """One fixed-width UTC form, so that comparing cursors as strings compares times.

    Label Studio drops the fraction of a whole second (``...:05Z`` beside ``...:05.1Z``),
    which would sort wrongly as text.
    """
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")
