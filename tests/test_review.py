"""`labelfix review`: in the terminal, automatic, and through a spreadsheet; with the store on
SQLite and on PostgreSQL."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.conftest import both_backends

pytestmark = both_backends


@pytest.fixture()
def scanned(run, csv_dataset: Path, probs_npy: Path) -> list[dict]:
    assert run("scan", str(csv_dataset), "--probs", str(probs_npy)).exit_code == 0
    return run("candidates", "--json").json()


def _history(run) -> list[dict]:
    return run("history", "--json").json()


def test_review_in_the_terminal_records_each_verdict_and_resumes(run, scanned, synthetic) -> None:
    names = list(synthetic.label_names)
    c = scanned
    # accept, keep, relabel to label 1 by number, discard, then quit.
    result = run("review", "--annotator", "alice", input="a\nk\n1\nd\nq\n")
    assert result.exit_code == 0, result.stderr
    assert f"[1 of {len(c)}]" in result.stdout and "Given: " in result.stdout
    assert "Saved. 4 of" in result.stdout
    history = {h["row"]: h for h in _history(run)}
    assert history[c[0]["row"]]["new_label"] == c[0]["suggested_label"]
    assert history[c[0]["row"]]["annotator"] == "alice"
    assert history[c[0]["row"]]["backend"] == "local"
    assert c[1]["row"] not in history  # kept: a confirmation changes no label
    if c[2]["given_label"] != names[0]:
        assert history[c[2]["row"]]["new_label"] == names[0]
    assert c[3]["row"] not in history  # discarded
    states = {x["row"]: x["review_state"] for x in run("candidates", "--json").json()}
    # Resume: the next session starts at the fifth candidate.
    again = run("review", "--annotator", "alice", input="q\n")
    assert f"[5 of {len(c)}]" in again.stdout
    assert f"rank 5 · row {c[4]['row']}" in again.stdout
    assert states[c[0]["row"]] == "pending"  # reviewed locally, never pushed anywhere


def test_enter_accepts_and_skip_leaves_a_candidate_pending(run, scanned) -> None:
    result = run("review", input="\ns\nq\n")
    assert result.exit_code == 0
    assert [h["row"] for h in _history(run)] == [scanned[0]["row"]]
    again = run("review", input="q\n")
    assert f"row {scanned[1]['row']}" in again.stdout  # the skipped one comes back first


def test_undo_takes_back_the_last_verdict_and_history_keeps_both(run, scanned) -> None:
    first = scanned[0]
    result = run("review", "--annotator", "bob", input="a\nu\nq\n")
    assert "Undone." in result.stdout
    history = _history(run)
    assert [(h["old_label"], h["new_label"]) for h in history] == [
        (first["suggested_label"], first["given_label"]),
        (first["given_label"], first["suggested_label"]),
    ]
    again = run("review", input="q\n")
    assert f"row {first['row']}" in again.stdout  # pending again after the undo


def test_end_of_input_quits_cleanly(run, scanned) -> None:
    result = run("review", input="a\n")
    assert result.exit_code == 0
    assert "Saved. 1 of" in result.stdout


def test_accept_suggested_uses_an_automatic_annotator(run, scanned) -> None:
    result = run("review", "--accept-suggested", "--top", "5")
    assert result.exit_code == 0, result.stderr
    history = _history(run)
    assert len(history) == 5
    assert {h["annotator"] for h in history} == {"auto:probs:probs.npy"}
    assert {h["row"] for h in history} == {c["row"] for c in scanned[:5]}
    # The next batch continues after the ones already judged.
    run("review", "--accept-suggested", "--top", "2", "--annotator", "trusted-model")
    assert len(_history(run)) == 7


def test_accept_suggested_respects_min_margin(run, scanned) -> None:
    result = run("review", "--accept-suggested", "--top", "10", "--min-margin", "1.0")
    assert result.exit_code == 0
    assert "below --min-margin" in result.stdout
    assert _history(run) == []
    missing_top = run("review", "--accept-suggested")
    assert missing_top.exit_code == 2 and "--top" in missing_top.stderr


def _fill(path: Path, edits: dict[int, dict[str, str]]) -> None:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for index, changes in edits.items():
        rows[index].update(changes)
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_sheet_round_trip(run, scanned, tmp_path: Path, synthetic) -> None:
    sheet = tmp_path / "s.csv"
    written = run("review", "--sheet", str(sheet))
    assert written.exit_code == 0, written.stderr
    raw = sheet.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # BOM: Excel opens UTF-8 correctly
    with sheet.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["row", "text", "given_label", "suggested_label", "label_quality",
                             "verdict", "label", "annotator"]
    assert len(rows) == len(scanned)
    assert int(rows[0]["row"]) == scanned[0]["row"]
    other = next(n for n in synthetic.label_names
                 if n not in (rows[2]["given_label"], rows[2]["suggested_label"]))
    _fill(sheet, {
        0: {"verdict": "relabel", "label": rows[0]["suggested_label"], "annotator": "dana"},
        1: {"verdict": "relabel", "label": rows[1]["suggested_label"]},
        2: {"verdict": "relabel", "label": other},
        3: {"verdict": "confirm"},
        4: {"verdict": "discard"},
    })
    imported = run("sync", "--backend", "sheet", "--sheet", str(sheet), "--json")
    assert imported.exit_code == 0, imported.stderr
    assert imported.json() == {"pushed": 0, "pulled": 5, "corrections": 3, "confirmed": 1,
                               "discarded": 1, "failed": 0}
    history = {h["row"]: h for h in _history(run)}
    assert history[scanned[0]["row"]]["annotator"] == "dana"
    assert history[scanned[2]["row"]]["new_label"] == other
    assert all(h["backend"] == "sheet" for h in history.values())
    again = run("sync", "--backend", "sheet", "--sheet", str(sheet), "--json").json()
    assert again["pulled"] == 0
    # The terminal review now starts after the rows judged in the sheet.
    assert f"row {scanned[5]['row']}" in run("review", input="q\n").stdout


def test_existing_sheet_is_never_overwritten(run, scanned, tmp_path: Path) -> None:
    sheet = tmp_path / "s.csv"
    sheet.write_text("someone's work")
    result = run("review", "--sheet", str(sheet))
    assert result.exit_code == 2
    assert sheet.read_text() == "someone's work"


@pytest.mark.parametrize("edit, message", [
    ({"text": "a different text", "verdict": "confirm"}, "the text of row"),
    ({"verdict": "relabel", "label": "Nonsense"}, "label 'Nonsense' is not one of"),
    ({"verdict": "maybe"}, "verdict 'maybe' is not one of relabel, confirm, discard"),
    ({"row": "99999", "verdict": "confirm"}, "row 99999 is not a candidate"),
])
def test_bad_sheets_are_refused_whole_with_their_lines(run, scanned, tmp_path: Path,
                                                      edit: dict, message: str) -> None:
    sheet = tmp_path / "s.csv"
    run("review", "--sheet", str(sheet))
    with sheet.open(encoding="utf-8-sig", newline="") as handle:
        first = next(csv.DictReader(handle))
    _fill(sheet, {0: {"verdict": "relabel", "label": first["suggested_label"]}, 3: edit})
    result = run("sync", "--backend", "sheet", "--sheet", str(sheet))
    assert result.exit_code == 2
    assert "nothing recorded" in result.stderr
    assert f"line 5: {message}" in result.stderr
    if "text" in edit:
        assert "differs from the scanned text" in result.stderr
    assert _history(run) == []


def test_terminal_then_sheet_on_the_same_row_keeps_both_and_the_newer_wins(
    run, scanned, tmp_path: Path, synthetic
) -> None:
    first = scanned[0]
    run("review", "--annotator", "alice", input="a\nq\n")
    sheet = tmp_path / "s.csv"
    # The sheet holds only pending rows; write the row in by hand as a reviewer might.
    with sheet.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "text", "given_label", "suggested_label", "label_quality",
                         "verdict", "label", "annotator"])
        writer.writerow([first["row"], first["text"], first["given_label"],
                         first["suggested_label"], "0", "confirm", "", "bob"])
    result = run("sync", "--backend", "sheet", "--sheet", str(sheet), "--json")
    assert result.exit_code == 0, result.stderr
    history = _history(run)
    assert [(h["annotator"], h["new_label"]) for h in history] == [
        ("bob", first["given_label"]), ("alice", first["suggested_label"])]


def test_nothing_left_to_review(run, scanned) -> None:
    run("review", "--accept-suggested", "--top", str(len(scanned)))
    result = run("review", input="q\n")
    assert "Nothing left to review" in result.stdout
