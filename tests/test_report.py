"""`labelfix report`: one self-contained HTML page (and PNGs) of an audit and its review.

Expected numbers are derived from what the test typed and from the CLI's own JSON
(`candidates --json`, `history --json`, `audits --json`), never from the report's code.
"""

from __future__ import annotations

import base64
import csv
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

SECTIONS = ["summary", "noise_matrix", "label_quality", "class_pairs", "review", "annotators",
            "facts"]
FIGURES = {"noise_matrix", "label_quality", "class_pairs", "review", "annotators"}
JSON_KEYS = {"audit_id", "path", "png_dir", "sections", "reviewed", "pending", "corrected",
             "confirmed", "discarded", "precision", "automatic", "precision_people"}
AUTO = "auto:probs:probs.npy"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


class Page(HTMLParser):
    """Checks that tags balance and collects, per section id, its tables (rows of cell texts),
    its text and its images."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.section: str | None = None
        self.tables: dict[str, list[list[list[str]]]] = {}
        self.text: dict[str, list[str]] = {}
        self.images: dict[str, list[dict[str, str]]] = {}
        self.tags: Counter[str] = Counter()
        self._cell: list[str] | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        attributes = {k: v or "" for k, v in attrs}
        if tag == "section":
            self.section = attributes.get("id")
        key = self.section or ""
        if tag == "img":
            self.images.setdefault(key, []).append(attributes)
        elif tag == "table":
            self.tables.setdefault(key, []).append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()
        key = self.section or ""
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[key][-1].append(self._row)
            self._row = None
        elif tag == "section":
            self.section = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self.section is not None:
            self.text.setdefault(self.section, []).append(data)

    def section_text(self, name: str) -> str:
        return " ".join(" ".join(self.text.get(name, [])).split())


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.errors == [], page.errors
    assert page.stack == [], f"unclosed: {page.stack}"
    return page


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


@pytest.fixture()
def scanned(run, csv_dataset: Path, probs_npy: Path) -> list[dict]:
    assert run("scan", str(csv_dataset), "--probs", str(probs_npy)).exit_code == 0
    return run("candidates", "--json").json()


@pytest.fixture()
def reviewed(run, scanned: list[dict], tmp_path: Path) -> dict:
    """Ranks 1-3 accepted automatically; alice: 4 accept, 5 keep, 6 discard then undo and keep,
    7 discard; bob (a sheet, later): 4 the suggested label again, 5 discard, 8 keep."""
    c = scanned
    assert len(c) >= 10
    assert run("review", "--accept-suggested", "--top", "3").exit_code == 0
    typed = run("review", "--annotator", "alice", input="a\nk\nd\nu\nk\nd\nq\n")
    assert typed.exit_code == 0, typed.stderr
    assert "Undone." in typed.stdout
    sheet = tmp_path / "bob.csv"
    with sheet.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "text", "verdict", "label", "annotator"])
        writer.writerow([c[3]["row"], c[3]["text"], "relabel", c[3]["suggested_label"], "bob"])
        writer.writerow([c[4]["row"], c[4]["text"], "discard", "", "bob"])
        writer.writerow([c[7]["row"], c[7]["text"], "confirm", "", "bob"])
    synced = run("sync", "--backend", "sheet", "--sheet", str(sheet), "--json")
    assert synced.exit_code == 0, synced.stderr
    return {"candidates": c, "history": run("history", "--json").json()}


def _corrected_rows(candidates: list[dict], history: list[dict]) -> set[int]:
    """Rows whose newest correction leaves a label other than the given one (history is newest
    first): exactly the rows a standing relabel holds."""
    given = {c["row"]: c["given_label"] for c in candidates}
    newest: dict[int, str] = {}
    for entry in history:
        newest.setdefault(entry["row"], entry["new_label"])
    return {row for row, label in newest.items() if row in given and label != given[row]}


def test_report_page_holds_every_section_with_the_right_numbers(
    run, reviewed: dict, tmp_path: Path, synthetic, probs_npy: Path
) -> None:
    c, history = reviewed["candidates"], reviewed["history"]
    rank = {x["row"]: x["rank"] for x in c}
    corrected = _corrected_rows(c, history)
    # What was typed: ranks 1-4 relabelled, 6 and 8 kept, 5 and 7 discarded (5 by bob, later).
    assert {rank[r] for r in corrected} == {1, 2, 3, 4}
    confirmed, discarded = 2, 2
    reviewed_n = len(corrected) + confirmed + discarded
    pending = len(c) - reviewed_n

    out, pngs = tmp_path / "out" / "r.html", tmp_path / "figs"
    result = run("report", "--out", str(out), "--png-dir", str(pngs), "--bucket-size", "5",
                 "--json")
    assert result.exit_code == 0, result.stderr
    data = result.json()
    audit = run("audits", "--json").json()[-1]
    assert set(data) == JSON_KEYS
    assert data == {
        "audit_id": audit["audit_id"], "path": str(out.resolve()),
        "png_dir": str(pngs.resolve()), "sections": SECTIONS, "reviewed": reviewed_n,
        "pending": pending, "corrected": 4, "confirmed": confirmed, "discarded": discarded,
        "precision": pytest.approx(4 / 6), "automatic": 3,
        "precision_people": pytest.approx(1 / 3),
    }

    page = parse(out)
    assert page.tags["html"] == page.tags["head"] == page.tags["body"] == 1
    assert [s for s in SECTIONS if s in page.text] == SECTIONS
    # Self-contained: no scripts, no stylesheets to fetch, every image inline.
    assert page.tags["script"] == 0 and page.tags["link"] == 0
    images = [img for found in page.images.values() for img in found]
    assert len(images) == len(FIGURES)
    for img in images:
        assert img["src"].startswith("data:image/png;base64,")
        width, height = png_size(base64.b64decode(img["src"].split(",", 1)[1]))
        assert 400 <= width <= 3000 and 300 <= height <= 3000
        assert img["alt"]
    html_text = out.read_text(encoding="utf-8")
    assert "http://" not in html_text and "https://" not in html_text
    assert f"audit {audit['audit_id']}" in html_text and audit["dataset"] in html_text

    # Summary cards.
    summary = page.section_text("summary")
    assert f"{synthetic.n:,} rows scanned" in summary
    assert f"{len(c)} candidates" in summary
    assert f"{reviewed_n} reviewed {pending} pending" in summary
    assert f"4 / {confirmed} / {discarded}" in summary
    assert f"{pct(4 / 6)} measured precision" in summary

    # Review: the overall table, then buckets of 5 ranks.
    overall, by_rank = page.tables["review"]
    assert overall[1] == [str(len(c)), str(reviewed_n), "4", "2", "2", str(pending),
                          pct(4 / 6)]
    assert by_rank[1] == ["1–5", "5", "5", "4", "0", "1", "0", "100.0%"]
    assert by_rank[2] == ["6–10", "5", "3", "0", "2", "1", "2", "0.0%"]
    assert len(by_rank) - 1 == -(-len(c) // 5)
    assert by_rank[-1][0] == f"{5 * (len(by_rank) - 2) + 1}–{len(c)}"
    assert "corrected / (corrected + confirmed)" in page.section_text("review")
    assert f"Precision over people's verdicts only: {pct(1 / 3)}" in page.section_text("review")

    # Annotators: latest standing verdicts each, undone ones counted apart; agreement.
    counts, agreement = page.tables["annotators"]
    assert counts[1:] == [
        ["alice", "4", "1", "2", "1", "1", "33.3%"],
        ["bob", "3", "1", "1", "1", "0", "50.0%"],
        [f"{AUTO} (automatic)", "3", "3", "0", "0", "0", "100.0%"],
    ]
    assert agreement[1:] == [["alice", "bob", "2", "1", "50.0%"]]

    # Class pairs: the candidates' (given, suggested) counts, largest first.
    pairs = Counter((x["given_label"], x["suggested_label"]) for x in c)
    table = page.tables["class_pairs"][0][1:]
    assert sorted((r[0], r[1], int(r[2])) for r in table) == sorted(
        (g, s, n) for (g, s), n in pairs.items())
    assert [int(r[2]) for r in table] == sorted((int(r[2]) for r in table), reverse=True)
    by_pair = {(r[0], r[1]): r for r in table}
    for row in corrected:
        x = c[rank[row] - 1]
        assert int(by_pair[(x["given_label"], x["suggested_label"])][4]) >= 1

    # Label quality: the threshold is the largest candidate quality.
    stats = dict((r[0], r[1]) for r in page.tables["label_quality"][0][1:])
    assert stats["Rows"] == f"{synthetic.n:,}"
    assert stats["Candidates"] == str(len(c))
    assert stats["Threshold (largest candidate quality)"] == \
        f"{max(x['label_quality'] for x in c):.4f}"
    assert int(stats["Rows at or below the threshold"].replace(",", "")) >= len(c)

    # Noise matrix: cleanlab's joint of the given labels and the scanned probabilities.
    from cleanlab.count import estimate_joint

    joint = estimate_joint(synthetic.labels, np.load(probs_npy))
    noise = 1 - np.trace(joint)
    assert f"Estimated label noise: {100 * noise:.2f}%" in page.section_text("noise_matrix")
    names = list(synthetic.label_names)
    off = [(joint[i, j], names[i], names[j]) for i in range(4) for j in range(4) if i != j]
    top = max(off)
    assert page.tables["noise_matrix"][0][1][:3] == [top[1], top[2], f"{100 * top[0]:.2f}%"]

    # Facts.
    facts = dict(page.tables["facts"][0])
    assert facts["Dataset"].startswith(audit["dataset"])
    assert facts["Model"] == audit["model"] == "probs:probs.npy"
    assert facts["Candidates"].startswith(f"{len(c)} of {synthetic.n}")
    assert "filter_by=prune_by_noise_rate" in facts["Parameters"]
    assert "rank_by=self_confidence" in facts["Parameters"]
    assert facts["Created"].endswith("UTC") and facts["Finished"].endswith("UTC")

    # PNGs beside the page: real images of a sensible size.
    assert {p.stem for p in pngs.iterdir()} == FIGURES
    for path in pngs.iterdir():
        width, height = png_size(path.read_bytes())
        assert 400 <= width <= 3000 and 300 <= height <= 3000, (path.name, width, height)


def test_report_before_any_review_and_without_stored_labels(run, scanned, tmp_path: Path,
                                                           db: Path) -> None:
    # Versions and audits recorded before labelfix kept labels and label quality (0004).
    import sqlite3

    with sqlite3.connect(db) as connection:
        connection.execute("update dataset_versions set labels = NULL")
        connection.execute("update audits set label_quality = NULL")
    result = run("report", "--out", str(tmp_path / "r.html"), "--json")
    assert result.exit_code == 0, result.stderr
    data = result.json()
    assert (data["reviewed"], data["pending"], data["precision"], data["png_dir"]) == (
        0, len(scanned), None, None)
    page = parse(tmp_path / "r.html")
    assert "No verdicts yet" in page.section_text("annotators")
    assert "annotators" not in page.images  # nothing to draw
    assert "n/a measured precision" in page.section_text("summary")
    assert "Not available" in page.section_text("noise_matrix")
    assert "scan it again" in page.section_text("noise_matrix")
    assert "Not available" in page.section_text("label_quality")
    assert set(page.images) == {"class_pairs", "review"}


def test_report_text_output_and_rewrite(run, scanned, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    out.write_text("old")
    result = run("report", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    assert f"written to {out.resolve()}" in result.stdout
    assert f"Reviewed 0 of {len(scanned)} candidates" in result.stdout
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert not list(tmp_path.glob(".r.html.tmp"))


def test_missing_matplotlib_is_one_clear_line(run, scanned, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import matplotlib` raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = run("report", "--out", str(tmp_path / "r.html"))
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "pip install 'labelfix[report]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("args, message", [
    (["--out", "."], "is a folder"),
    (["7", "--out", "r.html"], "there is no audit 7"),
    (["--bucket-size", "0", "--out", "r.html"], "--bucket-size"),
])
def test_bad_usage_exits_2(run, scanned, args: list[str], message: str) -> None:
    result = run("report", *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_no_audit_yet(run) -> None:
    result = run("report", "--out", "r.html")
    assert result.exit_code == 2
    assert "run `labelfix scan` first" in result.stderr


def test_audits_and_versions_mention_the_report(run, csv_dataset, probs_npy, tmp_path) -> None:
    assert run("scan", str(csv_dataset), "--probs", str(probs_npy)).exit_code == 0
    assert run("report", "--out", str(tmp_path / "r.html")).exit_code == 0
    listed = run("audits")
    assert f"Report of audit 1: {tmp_path / 'r.html'}" in listed.stdout
    versions = run("history", "--versions", "--json").json()
    assert versions[0]["report"] == str(tmp_path / "r.html")
    assert f"Report of version 0 of reviews: {tmp_path / 'r.html'}" in run(
        "history", "--versions").stdout
