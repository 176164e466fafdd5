"""The store on SQLite and on PostgreSQL, side by side in one run: a 1,000,000 x 20 audit and
a sync of 10,000 verdicts.

    python benchmarks/bench_store.py postgresql+psycopg://USER@HOST:PORT/DB
        [--rows 1000000] [--classes 20] [--verdicts 10000] [--repeats 1] [--seed 0]

The URL names any database on the server that the user may connect to; each run creates a
database of its own there (the user needs CREATEDB) and drops it afterwards. SQLite runs in a
temporary folder. Both go through labelfix's own code, in this process:

* scan: ``run_scan`` of the seeded synthetic CSV with ``--probs`` of its (N, K) .npy (the data
  of bench_scan.py, cached in benchmarks/_work/): load, validate, cleanlab, and the audit
  stored (the probabilities on a thread while cleanlab works, then the candidates);
* probabilities save / load: ``labelfix.store.probabilities.save`` of the N x K matrix under
  another key, committed (the part of the scan that the thread hides), and ``load`` back;
* candidates: ``labelfix.scan.insert_candidates`` of the scan's candidates again, under a
  second audit, committed;
* sheet written: ``write_sheet`` (``labelfix review --sheet``) of every pending candidate;
* sync: ``import_sheet`` (``labelfix sync --backend sheet``) of the sheet with the first
  --verdicts lines filled in as relabels: annotations, corrections and review states.

Checks (untimed): the loaded matrix equals the file's bit for bit; both databases hold the
same candidates and exactly --verdicts corrections. Prints a markdown table of seconds (the
median of --repeats) with the PostgreSQL/SQLite ratio. Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

MEASURES = ("scan (run_scan --probs, whole)", "probabilities save (N x K, committed)",
            "probabilities load", "candidates insert (committed)", "sheet written (review "
            "--sheet)", "sync: import the verdicts (sync --backend sheet)")


@contextmanager
def sqlite_database() -> Iterator[str]:
    folder = Path(tempfile.mkdtemp(prefix="labelfix-bench-store-"))
    try:
        yield f"sqlite:///{folder / 'labelfix.db'}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    from labelfix.store import resolve_url

    server = make_url(resolve_url(server_url))
    name = f"labelfix_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _timed(timings: dict[str, float], key: str, function: Callable[[], object]) -> object:
    started = time.perf_counter()
    result = function()
    timings[key] = time.perf_counter() - started
    return result


def one_run(url: str, csv_path: Path, npy_path: Path, *, verdicts: int, work: Path
            ) -> tuple[dict[str, float], dict[str, object]]:
    """Every measure on one empty database; returns seconds and what the checks compare."""
    from sqlalchemy import func, select

    from labelfix.data import SourceSpec
    from labelfix.review import import_sheet, write_sheet
    from labelfix.scan import insert_candidates, run_scan
    from labelfix.store import Store
    from labelfix.store import probabilities as stored
    from labelfix.store.models import Audit, Candidate, Correction, ProbabilitySet

    timings: dict[str, float] = {}
    store = Store(url)
    store.engine  # noqa: B018 -- the schema is made before the clock starts
    matrix = np.load(npy_path)
    scan = _timed(timings, MEASURES[0], lambda: run_scan(
        store, SourceSpec(source=str(csv_path)), probs_file=npy_path, top=0))

    def save() -> int:
        with store.session() as session:
            return stored.save(session, matrix, fingerprint="bench", source_key="bench",
                               source="bench").id

    set_id = _timed(timings, MEASURES[1], save)

    def load() -> np.ndarray:
        with store.session() as session:
            return stored.load(session, session.get_one(ProbabilitySet, set_id))

    loaded = _timed(timings, MEASURES[2], load)
    with store.session() as session:
        audit = session.get_one(Audit, scan.audit_id)  # type: ignore[attr-defined]
        columns = ("row", "rank", "text", "text_pair", "text_hash", "given_label",
                   "suggested_label", "label_quality")
        rows = [dict(zip(columns, r, strict=True)) for r in session.execute(
            select(*(getattr(Candidate, c) for c in columns))
            .where(Candidate.audit_id == audit.id).order_by(Candidate.rank))]
        second = Audit(dataset_version_id=audit.dataset_version_id, status="complete",
                       model="bench", prob_source="file", parameters={}, labelfix_version="-",
                       timings={})
        session.add(second)
        session.flush()
        second_id = second.id
    for row in rows:
        row["audit_id"] = second_id

    def insert() -> None:
        with store.session() as session:
            insert_candidates(session, rows)

    _timed(timings, MEASURES[3], insert)
    sheet = work / f"sheet-{uuid.uuid4().hex[:8]}.csv"
    _timed(timings, MEASURES[4], lambda: write_sheet(store, sheet, scan.audit_id))  # type: ignore[attr-defined]
    fill_sheet(sheet, verdicts=verdicts)
    imported = _timed(timings, MEASURES[5], lambda: import_sheet(
        store, sheet, default_annotator="bench"))
    with store.session() as session:
        corrections = session.scalar(select(func.count()).select_from(Correction))
    store.dispose()
    checks = {
        "matrix equal": bool(np.array_equal(loaded, matrix)),
        "candidates": len(rows),
        "candidate rows": hash(tuple(r["row"] for r in rows)),
        "corrections": corrections,
        "recorded": imported.recorded,  # type: ignore[attr-defined]
    }
    return timings, checks


def fill_sheet(sheet: Path, *, verdicts: int) -> None:
    """Relabel the first ``verdicts`` lines to their suggested label (the next class when it
    is the given one); the rest stay blank."""
    with sheet.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        lines = list(reader)
    if len(lines) < verdicts:
        sys.exit(f"cleanlab flagged only {len(lines)} rows, fewer than --verdicts {verdicts}; "
                 "raise --rows")
    for line in lines[:verdicts]:
        label = line["suggested_label"]
        if label == line["given_label"]:
            number = int(label.rsplit("_", 1)[1])
            label = f"class_{(number + 1) % 20:02d}"
        line["verdict"], line["label"], line["annotator"] = "relabel", label, "bench"
    with sheet.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("postgres_url", help="postgresql+psycopg://USER@HOST:PORT/DB")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--verdicts", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.classes != 20:
        sys.exit("--classes: the sheet's labels are class_00..class_19; keep 20")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from bench_scan import make_data

    from labelfix.store.engine import redact

    csv_path, npy_path = make_data(args.rows, args.classes, args.seed)
    results: dict[str, list[dict[str, float]]] = {"sqlite": [], "postgresql": []}
    checks: dict[str, list[dict[str, object]]] = {"sqlite": [], "postgresql": []}
    with tempfile.TemporaryDirectory(prefix="labelfix-bench-sheets-") as work:
        # Untimed, on 2,000 rows: the first run in a process pays for importing cleanlab,
        # pandas and pyarrow and for the first connections, which would count against
        # whichever database went first.
        small_csv, small_npy = make_data(2_000, args.classes, args.seed)
        for opener in (sqlite_database(), postgres_database(args.postgres_url)):
            with opener as url:
                one_run(url, small_csv, small_npy, verdicts=10, work=Path(work))
        for repeat in range(args.repeats):
            # Alternating, so that a change in the machine's load hits both alike.
            order = ("sqlite", "postgresql") if repeat % 2 == 0 else ("postgresql", "sqlite")
            for backend in order:
                opener = sqlite_database() if backend == "sqlite" else \
                    postgres_database(args.postgres_url)
                with opener as url:
                    timings, found = one_run(url, csv_path, npy_path, verdicts=args.verdicts,
                                             work=Path(work))
                results[backend].append(timings)
                checks[backend].append(found)
                print(f"run {repeat + 1} {backend}: " + ", ".join(
                    f"{k.split(' (')[0]} {v:.2f} s" for k, v in timings.items()),
                    file=sys.stderr)
    failures = []
    reference = checks["sqlite"][0]
    for backend, found in checks.items():
        for one in found:
            if not one["matrix equal"]:
                failures.append(f"{backend}: the loaded matrix differs from the file")
            if one["corrections"] != args.verdicts or one["recorded"] != args.verdicts:
                failures.append(f"{backend}: {one['recorded']} verdicts recorded and "
                                f"{one['corrections']} corrections, expected {args.verdicts}")
            if (one["candidates"], one["candidate rows"]) != (reference["candidates"],
                                                              reference["candidate rows"]):
                failures.append(f"{backend}: other candidates than SQLite's first run")
    from importlib.metadata import version

    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f}; SQLAlchemy {version('sqlalchemy')}, "
          f"psycopg {version('psycopg')}; PostgreSQL at {redact(args.postgres_url)}; "
          f"{args.rows:,} x {args.classes}, {reference['candidates']:,} candidates, "
          f"{args.verdicts:,} verdicts; median of {args.repeats} run(s)\n")
    print("| measure | SQLite (s) | PostgreSQL (s) | PostgreSQL / SQLite |")
    print("|---|---|---|---|")
    for measure in MEASURES:
        lite = statistics.median(r[measure] for r in results["sqlite"])
        pg = statistics.median(r[measure] for r in results["postgresql"])
        print(f"| {measure} | {lite:.2f} | {pg:.2f} | {pg / lite:.2f}x |")
    if failures:
        print("\nFAILED: " + "; ".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
