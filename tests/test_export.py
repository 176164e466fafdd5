"""`labelfix export`: the corrected data as a new version, its changelog and provenance, with
the store on SQLite and on PostgreSQL."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Database, both_backends, db_count

pytestmark = both_backends

EXPORT_KEYS = {"dataset", "version", "path", "rows", "corrections_applied"}


@pytest.fixture()
def reviewed(run, csv_dataset: Path, probs_npy: Path, tmp_path: Path, synthetic) -> dict:
    """Candidate 0 relabelled then superseded, 1 relabelled, 2 confirmed, 3 discarded."""
    assert run("scan", str(csv_dataset), "--probs", str(probs_npy)).exit_code == 0
    cands = run("candidates", "--json").json()
    assert run("review", "--annotator", "alice", input="a\na\nk\nd\nq\n").exit_code == 0
    third = next(n for n in synthetic.label_names
                 if n not in (cands[0]["given_label"], cands[0]["suggested_label"]))
    sheet = tmp_path / "later.csv"
    with sheet.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "text", "verdict", "label", "annotator"])
        writer.writerow([cands[0]["row"], cands[0]["text"], "relabel", third, "bob"])
    assert run("sync", "--backend", "sheet", "--sheet", str(sheet)).exit_code == 0
    return {"candidates": cands, "third": third}


def _source_labels(synthetic) -> list[str]:
    return synthetic.label_strings()


def test_export_applies_exactly_the_corrections(run, reviewed, tmp_path: Path, synthetic) -> None:
    cands, third = reviewed["candidates"], reviewed["third"]
    result = run("export", "reviews", "--out", str(tmp_path / "v1"), "--json")
    assert result.exit_code == 0, result.stderr
    data = result.json()
    assert set(data) == EXPORT_KEYS
    assert data == {"dataset": "reviews", "version": 1, "path": str(tmp_path / "v1"),
                    "rows": synthetic.n, "corrections_applied": 3}
    from datasets import load_from_disk

    exported = load_from_disk(str(tmp_path / "v1"))
    labels = exported["label"]
    expected = _source_labels(synthetic)
    expected[cands[0]["row"]] = third                        # superseded: the newer verdict
    expected[cands[1]["row"]] = cands[1]["suggested_label"]  # relabelled
    # confirmed and discarded rows keep their label
    assert labels == expected
    assert exported["text"] == synthetic.texts
    assert exported.info.version.version_str == "0.1.0"
    changelog = list(csv.DictReader((tmp_path / "v1" / "corrections.csv").open()))
    relabels = [r for r in changelog if r["change"] == "relabel"]
    assert [(int(r["row"]), r["new_label"], r["annotator"]) for r in relabels] == [
        (cands[0]["row"], cands[0]["suggested_label"], "alice"),
        (cands[1]["row"], cands[1]["suggested_label"], "alice"),
        (cands[0]["row"], third, "bob"),
    ]
    assert [(int(r["row"]), r["change"]) for r in changelog if "discard" in r["change"]] == [
        (cands[3]["row"], "discarded (kept)")]
    manifest = json.loads((tmp_path / "v1" / "labelfix.json").read_text())
    assert manifest["version"] == 1 and manifest["parent_version"] == 0
    assert manifest["corrections_applied"] == 3 and manifest["audits"] == [1]
    assert manifest["cleanlab_version"] and manifest["labelfix_version"]
    history = run("history", "--json").json()
    assert {h["version"] for h in history} == {1}
    versions = run("history", "--versions", "--json").json()
    assert [(v["version"], v["corrections_applied"]) for v in versions] == [(0, 0), (1, 3)]


def test_drop_discarded_leaves_those_rows_out(run, reviewed, tmp_path: Path, synthetic) -> None:
    cands = reviewed["candidates"]
    result = run("export", "reviews", "--out", str(tmp_path / "v1"), "--drop-discarded", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["rows"] == synthetic.n - 1
    from datasets import load_from_disk

    texts = load_from_disk(str(tmp_path / "v1"))["text"]
    assert synthetic.texts[cands[3]["row"]] not in texts
    changelog = (tmp_path / "v1" / "corrections.csv").read_text()
    assert f"{cands[3]['row']},dropped" in changelog


@pytest.mark.parametrize("fmt, loader, files", [
    ("parquet", "parquet", "data.parquet"),
    ("csv", "csv", "data.csv"),
    ("jsonl", "json", "data.jsonl"),
])
def test_every_format_loads_back(run, reviewed, tmp_path: Path, synthetic, fmt: str, loader: str,
                                 files: str) -> None:
    from datasets import load_dataset

    out = tmp_path / f"v1_{fmt}"
    assert run("export", "reviews", "--out", str(out), "--format", fmt).exit_code == 0
    loaded = load_dataset(loader, data_files=str(out / files), split="train",
                          cache_dir=str(tmp_path / "cache"))
    assert loaded.num_rows == synthetic.n
    cands, third = reviewed["candidates"], reviewed["third"]
    assert loaded["label"][cands[0]["row"]] == third
    assert loaded["text"][5] == synthetic.texts[5]


def test_features_and_version_of_a_saved_dataset_are_kept(run, tmp_path: Path, synthetic) -> None:
    from datasets import ClassLabel, Dataset, DatasetInfo, Features, Value, load_from_disk

    features = Features({"text": Value("string"), "label": ClassLabel(names=list(
        synthetic.label_names)), "source_id": Value("int32")})
    Dataset.from_dict(
        {"text": synthetic.texts, "label": synthetic.labels.tolist(),
         "source_id": list(range(synthetic.n))},
        info=DatasetInfo(version="1.0.0", features=features),
    ).save_to_disk(str(tmp_path / "src"))
    probs = tmp_path / "p.npy"
    np.save(probs, synthetic.probs())
    assert run("scan", str(tmp_path / "src"), "--probs", str(probs)).exit_code == 0
    assert run("review", "--accept-suggested", "--top", "3").exit_code == 0
    assert run("export", "src", "--out", str(tmp_path / "v1")).exit_code == 0
    exported = load_from_disk(str(tmp_path / "v1"))
    assert exported.features == features
    assert exported.info.version.version_str == "1.1.0"
    assert exported["source_id"] == list(range(synthetic.n))
    pairs = zip(exported["label"], synthetic.labels.tolist(), strict=True)
    assert sum(a != b for a, b in pairs) == 3


def test_an_existing_folder_is_never_touched(run, reviewed, tmp_path: Path) -> None:
    out = tmp_path / "v1"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run("export", "reviews", "--out", str(out))
    assert result.exit_code == 2
    assert "never overwrites" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_changed_source_is_refused_naming_both_fingerprints(run, reviewed, tmp_path: Path,
                                                             csv_dataset: Path,
                                                             synthetic) -> None:
    synthetic.texts[0] = "edited after the scan"
    synthetic.write(csv_dataset)
    result = run("export", "reviews", "--out", str(tmp_path / "v1"))
    assert result.exit_code == 1
    assert "changed since it was scanned" in result.stderr
    assert "fingerprint" in result.stderr
    assert not (tmp_path / "v1").exists()
    assert len(run("history", "--versions", "--json").json()) == 1


def test_a_second_export_without_new_corrections_writes_nothing(run, reviewed,
                                                                tmp_path: Path) -> None:
    assert run("export", "reviews", "--out", str(tmp_path / "v1")).exit_code == 0
    again = run("export", "reviews", "--out", str(tmp_path / "v2"))
    assert again.exit_code == 0
    assert "No corrections since version 1" in again.stderr
    assert not (tmp_path / "v2").exists()


def test_a_crash_while_writing_leaves_no_version(run, reviewed, tmp_path: Path, db: Database,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import labelfix.export

    def broken(dataset: object, folder: Path, fmt: str) -> None:
        folder.mkdir()
        (folder / "half-written").write_text("x")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(labelfix.export, "_write", broken)
    result = run("export", "reviews", "--out", str(tmp_path / "v1"))
    assert result.exit_code == 1
    assert not (tmp_path / "v1").exists()
    assert [p.name for p in tmp_path.iterdir() if "labelfix-" in p.name] == []
    assert db_count(db, "select count(*) from dataset_versions") == 1
    assert db_count(db, "select count(*) from corrections where version_id is not null") == 0
    monkeypatch.undo()
    assert run("export", "reviews", "--out", str(tmp_path / "v1")).exit_code == 0


def test_rescanning_an_exported_version_skips_reviewed_rows(run, reviewed, tmp_path: Path,
                                                           synthetic) -> None:
    cands = reviewed["candidates"]
    assert run("export", "reviews", "--out", str(tmp_path / "v1"), "--drop-discarded").exit_code \
        == 0
    from datasets import load_from_disk

    exported = load_from_disk(str(tmp_path / "v1"))
    kept_rows = [i for i in range(synthetic.n) if i != cands[3]["row"]]
    # Probabilities that disagree with every reviewed row, so cleanlab flags them again.
    probs = synthetic.probs()[kept_rows]
    np.save(tmp_path / "p1.npy", probs)
    result = run("scan", str(tmp_path / "v1"), "--probs", str(tmp_path / "p1.npy"), "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["dataset"] == "reviews"
    audits = run("audits", "--json").json()
    assert audits[-1]["version"] == 1
    listed = run("candidates", "--json").json()
    rows = {c["row"] for c in listed}
    reviewed_rows = {c["row"] for c in cands[:4]}
    assert not rows & reviewed_rows
    # Rows are version-0 indices even though version 1 dropped a row.
    for c in listed[:5]:
        assert synthetic.texts[c["row"]] == c["text"]
    assert exported.num_rows == synthetic.n - 1


def test_push_to_hub_failure_is_one_line_and_keeps_the_local_version(run, reviewed,
                                                                    tmp_path: Path) -> None:
    result = run("export", "reviews", "--out", str(tmp_path / "v1"), "--push-to-hub",
                 "someone/reviews-fixed")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot push" in result.stderr and "written locally" in result.stderr
    assert (tmp_path / "v1" / "labelfix.json").exists()


def test_verdicts_arriving_while_writing_stop_the_export_before_it_records(
        run, reviewed, tmp_path: Path, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process records verdicts while the export writes: the version would claim
    corrections its data lacks, so nothing is recorded and a rerun exports them all."""
    import labelfix.export
    from labelfix.review import accept_suggested
    from labelfix.store import Store, resolve_url

    write = labelfix.export._write

    def write_then_someone_reviews(output: object, folder: Path, fmt: str) -> None:
        write(output, folder, fmt)
        other = Store(resolve_url(str(db)))
        accept_suggested(other, top=3, annotator="carol")
        other.dispose()

    monkeypatch.setattr(labelfix.export, "_write", write_then_someone_reviews)
    result = run("export", "reviews", "--out", str(tmp_path / "v1"))
    assert result.exit_code == 1
    assert "changed while this export was writing" in result.stderr
    assert not (tmp_path / "v1").exists()
    assert db_count(db, "select count(*) from dataset_versions") == 1
    monkeypatch.undo()
    rerun = run("export", "reviews", "--out", str(tmp_path / "v1"), "--json")
    assert rerun.exit_code == 0, rerun.stderr
    assert rerun.json()["corrections_applied"] == 3 + db_count(
        db, "select count(*) from corrections c join annotations a on a.id = c.annotation_id "
            "where a.annotator = 'carol'")
