"""Odd input at scale (hypothesis): strange encodings, embedded newlines and quotes, very long
texts, unicode labels, duplicate rows. Each input is processed correctly or refused with one
line and exit 2: never a traceback, never a partial write."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from labelfix.cli import app
from tests.conftest import db_exists_with_data

TEXT = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=st.sampled_from(list('ab "\',\n\r\t;\\é中🙂\u200b')), max_size=40),
    st.just("x" * 100_000),
    st.just("   "),
)
LABEL = st.one_of(st.sampled_from(["pos", "neg", "négatif", "正", "😀", "a,b", 'q"uote', " pad "]),
                  st.text(min_size=1, max_size=8))
ROWS = st.lists(st.tuples(TEXT, LABEL), min_size=1, max_size=40)
FUZZ = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


def _invoke(db: Path, *args: str):
    return CliRunner().invoke(app, ["--db", str(db), *args], catch_exceptions=False)


def _check_refusal(result, db: Path) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.stdout)
    assert result.stderr.startswith("Error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr
    assert not db_exists_with_data(db)


@FUZZ
@given(rows=ROWS, duplicate=st.booleans(), fmt=st.sampled_from(["csv", "jsonl", "tsv"]),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "latin-1"]))
def test_sources_are_scanned_or_refused_cleanly(rows: list[tuple[str, str]], duplicate: bool,
                                                fmt: str, encoding: str) -> None:
    import pandas as pd

    if duplicate:
        rows = rows + rows
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        frame = pd.DataFrame(rows, columns=["text", "label"])
        path = base / f"data.{fmt}"
        try:
            if fmt == "jsonl":
                path.write_bytes(frame.to_json(orient="records", lines=True,
                                               force_ascii=False).encode(encoding))
            else:
                path.write_bytes(frame.to_csv(index=False, sep="\t" if fmt == "tsv" else ",")
                                 .encode(encoding))
        except UnicodeEncodeError:
            return  # latin-1 cannot hold these characters; nothing to test
        names = sorted({label.strip() for _text, label in rows if label.strip()})
        k = max(len(names), 2)
        probs = np.random.default_rng(0).dirichlet(np.ones(k), size=len(rows)).astype("f4")
        np.save(base / "p.npy", probs)
        db = base / "fuzz.db"
        result = _invoke(db, "scan", str(path), "--probs", str(base / "p.npy"), "--json")
        if result.exit_code != 0:
            _check_refusal(result, db)
            return
        listed = _invoke(db, "candidates", "--json")
        assert listed.exit_code == 0
        import json

        for candidate in json.loads(listed.stdout):
            assert candidate["text"] == rows[candidate["row"]][0]
            assert candidate["given_label"] == rows[candidate["row"]][1].strip()


SHEET_CELL = st.one_of(st.text(max_size=20), st.sampled_from(
    ["relabel", "confirm", "discard", "RELABEL", "", "Sports", "World", "nope", "-1", "999999"]))


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(
    ["row", "text", "verdict", "label", "annotator"]), SHEET_CELL), max_size=8),
    extra_line=st.booleans(), encoding=st.sampled_from(["utf-8-sig", "utf-8", "utf-16"]))
def test_sheet_imports_are_recorded_or_refused_whole(edits: list[tuple[int, str, str]],
                                                    extra_line: bool, encoding: str) -> None:
    from tests.conftest import make_synthetic

    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        data = make_synthetic(80, seed=3)
        data.write(base / "d.csv")
        np.save(base / "p.npy", data.probs())
        db = base / "s.db"
        assert _invoke(db, "scan", str(base / "d.csv"), "--probs", str(base / "p.npy")
                       ).exit_code == 0
        sheet = base / "s.csv"
        assert _invoke(db, "review", "--sheet", str(sheet)).exit_code == 0
        with sheet.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle))
        for index, column, value in edits:
            if index < len(rows):
                rows[index][column] = value
        if extra_line:
            rows.append({"row": "x", "text": "y\nz", "verdict": "confirm", "label": "",
                         "annotator": ""})
        with sheet.open("w", encoding=encoding, newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["row"])
            writer.writeheader()
            writer.writerows(rows)
        result = _invoke(db, "sync", "--backend", "sheet", "--sheet", str(sheet))
        import sqlite3

        with sqlite3.connect(db) as connection:
            recorded = connection.execute("select count(*) from annotations").fetchone()[0]
        if result.exit_code != 0:
            assert result.exit_code == 2, (result.stderr, result.stdout)
            assert len(result.stderr.strip().splitlines()) == 1
            assert "Traceback" not in result.stderr and "unexpected" not in result.stderr
            assert recorded == 0
