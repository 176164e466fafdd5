"""Whole-process benchmark of ``labelfix export --format arrow`` against a plain save_to_disk.

    python benchmarks/bench_export.py [--rows 1000000] [--corrections 10000] [--repeats 3]
        [--stages N] [--also NAME=CMD ...] [--no-from-csv]

--stages N also times labelfix's export stages in-process (functions of labelfix.export and
labelfix.data wrapped in timers); --also times other labelfix commands (e.g. a patched
prototype) in the same alternating loop, with the same correctness check.

Target (issue 6): with N = 1,000,000 rows and 10,000 corrections, ``labelfix export --format
arrow`` takes at most 1.5x a plain ``Dataset.save_to_disk`` of the same data, in the same run.

Setup (seeded; data and the prepared database are cached in benchmarks/_work/):

1. a CSV ``text,label`` of N short texts (5-12 words plus the row number) with string labels
   ``class_00``..``class_19`` and an (N, 20) float32 .npy of probabilities, confident on the
   true class, with ~5% of the given labels flipped (so cleanlab flags ~5% of rows);
2. ``labelfix --db T scan CSV --probs NPY --top 0``, ``labelfix --db T review --sheet S.csv``,
   ``verdict=relabel`` + ``label=<suggested label, or the next class if that equals the given
   one>`` filled in for the --corrections best-ranked lines (the rest left blank), ``labelfix
   --db T sync --backend sheet --sheet S.csv``; ``labelfix --db T history --json`` must list
   exactly --corrections corrections. T is copied for every export (version 1 must not exist).

Timed, alternately, as whole processes under ``/usr/bin/time -v`` (wall and peak RSS):

* labelfix: ``labelfix --db COPY export NAME --out OUT --format arrow`` (fresh OUT each time);
* baseline "pandas" (the primary one, what the ratio target is checked against):
  ``Dataset.from_pandas(pandas.read_csv(CSV), preserve_index=False).save_to_disk(OUT)``;
* baseline "from_csv" (the datasets-native route): ``Dataset.from_csv(CSV).save_to_disk(OUT)``
  with an empty ``HF_DATASETS_CACHE`` per run (a first-time user: no cache hit; it writes
  the Arrow cache file and then the copy save_to_disk makes).

Both baseline processes also report the in-process seconds of ``save_to_disk`` alone on the
already-loaded Dataset ("save_to_disk only"), so both readings of "a plain save_to_disk" are
on record.

Correctness (every repeat, untimed): ``datasets.load_from_disk(OUT)`` has N rows, the same
texts, and its labels differ from the CSV's at exactly the corrected rows, where they equal the
sheet's labels. Exits 1 otherwise, or if any process fails; exits 2 when the ratio misses 1.5.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "_work"
GNU_TIME = "/usr/bin/time"
CLASSES = 20
TARGET = 1.5

BASELINE_SCRIPT = textwrap.dedent('''
    import json, sys, time
    started = time.perf_counter()
    route, csv_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar
    disable_progress_bar()
    if route == "pandas":
        import pandas as pd
        dataset = Dataset.from_pandas(pd.read_csv(csv_path), preserve_index=False)
    else:
        dataset = Dataset.from_csv(csv_path)
    loaded = time.perf_counter()
    dataset.save_to_disk(out)
    saved = time.perf_counter()
    print(json.dumps({"load_s": loaded - started, "save_s": saved - loaded,
                      "rows": dataset.num_rows}))
''')

# Runs `labelfix ... export ...` in-process with its stages wrapped in timers (inclusive seconds;
# nested stages are also counted in their parents). Printed as JSON on stderr's last line.
STAGES_SCRIPT = textwrap.dedent('''
    import atexit, functools, json, sys, time
    T0 = time.perf_counter()
    from sqlalchemy.orm import Session
    import labelfix.data as data
    import labelfix.export as ex
    from labelfix.cli import main
    seconds = {"imports (python start to CLI ready)": time.perf_counter() - T0}
    def timed(owner, attr, key):
        original = getattr(owner, attr)
        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            if key == "export._as_dataset" and "datasets" not in sys.modules:
                started = time.perf_counter()
                import datasets  # noqa: F401
                seconds["import datasets (first use, in _as_dataset)"] = (
                    time.perf_counter() - started)
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - started
        setattr(owner, attr, wrapper)
    for name in ("run_export", "_plan", "standing_verdicts", "load", "_corrected_labels",
                 "_output_table", "_as_dataset", "fingerprint", "_write", "_record",
                 "_write_changelog", "_write_manifest"):
        timed(ex, name, "export." + name)
    for name in ("_read_delimited", "_text_array", "_encode_labels", "fingerprint"):
        timed(data, name, "data." + name)
    timed(Session, "flush", "Session.flush (incl. autoflush)")
    atexit.register(lambda: print(json.dumps(
        {**seconds, "process (python start to exit)": time.perf_counter() - T0}),
        file=sys.stderr))
    sys.argv = ["labelfix", *sys.argv[1:]]
    main()
''')


# --------------------------------------------------------------------------- data


def make_data(rows: int, seed: int) -> tuple[Path, Path]:
    """The cached CSV and .npy for these parameters: bench_scan.py's data, CLASSES classes."""
    from bench_scan import make_data as scan_data

    return scan_data(rows, CLASSES, seed)


def _labelfix(labelfix: list[str], db: Path, *args: str) -> str:
    done = subprocess.run([*labelfix, "--db", str(db), *args], capture_output=True, text=True,
                          cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"FAILED ({done.returncode}): labelfix --db {db} {' '.join(args)}\n"
                 f"{done.stdout}\n{done.stderr}")
    return done.stdout


def make_template(labelfix: list[str], csv_path: Path, npy_path: Path,
                  corrections: int) -> tuple[Path, dict[int, str]]:
    """A database with one scan and exactly ``corrections`` relabel verdicts (cached), and
    the corrected rows -> their new label names."""
    stem = f"{csv_path.stem}_c{corrections}"
    db, sheet, done = WORK / f"{stem}.db", WORK / f"{stem}.sheet.csv", WORK / f"{stem}.json"
    if db.is_file() and done.is_file():
        return db, {int(k): v for k, v in json.loads(done.read_text()).items()}
    for stale in (db, sheet, done, db.with_name(db.name + "-wal"),
                  db.with_name(db.name + "-shm")):
        stale.unlink(missing_ok=True)
    started = time.perf_counter()
    _labelfix(labelfix, db, "scan", str(csv_path), "--probs", str(npy_path), "--top", "0")
    _labelfix(labelfix, db, "review", "--sheet", str(sheet))
    with sheet.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        lines = list(reader)
    if len(lines) < corrections:
        sys.exit(f"cleanlab flagged only {len(lines)} rows, fewer than --corrections "
                 f"{corrections}; raise NOISE in bench_scan.py or the row count")
    names = [f"class_{k:02d}" for k in range(CLASSES)]
    chosen: dict[int, str] = {}
    for line in lines[:corrections]:
        label = line["suggested_label"]
        if label == line["given_label"]:
            label = names[(names.index(line["given_label"]) + 1) % CLASSES]
        line["verdict"], line["label"], line["annotator"] = "relabel", label, "bench"
        chosen[int(line["row"])] = label
    with sheet.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(lines)
    _labelfix(labelfix, db, "sync", "--backend", "sheet", "--sheet", str(sheet))
    history = json.loads(_labelfix(labelfix, db, "history", "--json"))
    if len(history) != corrections:
        sys.exit(f"history --json lists {len(history)} corrections, expected {corrections}")
    # Make the template one self-contained file.
    import sqlite3

    with sqlite3.connect(db) as connection:
        connection.execute("pragma wal_checkpoint(truncate)")
    done.write_text(json.dumps({str(k): v for k, v in chosen.items()}))
    print(f"prepared {db.name}: {len(lines)} candidates, {corrections} corrections, "
          f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
    return db, chosen


# --------------------------------------------------------------------------- measuring


def measure(cmd: list[str], run_dir: Path, env: dict[str, str] | None = None) -> dict:
    """One whole process under /usr/bin/time -v: wall seconds, peak RSS, CPU seconds."""
    time_file = run_dir / "time.txt"
    with (run_dir / "stdout.txt").open("wb") as out, (run_dir / "stderr.txt").open("wb") as err:
        started = time.perf_counter()
        code = subprocess.call([GNU_TIME, "-v", "-o", str(time_file), *cmd], stdout=out,
                               stderr=err, cwd=ROOT, env=env)
        wall = time.perf_counter() - started
    if code != 0:
        sys.exit(f"FAILED ({code}): {' '.join(cmd)}\n"
                 f"{(run_dir / 'stderr.txt').read_text(errors='replace')}")
    fields = {}
    for line in time_file.read_text().splitlines():
        key, _, value = line.strip().rpartition(": ")
        fields[key] = value
    return {
        "wall": wall,
        "rss_mib": int(fields["Maximum resident set size (kbytes)"]) / 1024,
        "cpu": float(fields["User time (seconds)"]) + float(fields["System time (seconds)"]),
        "stdout": (run_dir / "stdout.txt").read_text(errors="replace"),
    }


def run_baseline(python: str, route: str, csv_path: Path, run_dir: Path) -> dict:
    run_dir.mkdir(parents=True)
    script = run_dir / "baseline.py"
    script.write_text(BASELINE_SCRIPT)
    env = dict(os.environ)
    env["HF_DATASETS_CACHE"] = str(run_dir / "hf_cache")  # empty: no cache hit for from_csv
    result = measure([python, str(script), route, str(csv_path), str(run_dir / "out")],
                     run_dir, env)
    result.update(json.loads(result["stdout"].strip().splitlines()[-1]))
    shutil.rmtree(run_dir / "out", ignore_errors=True)
    shutil.rmtree(run_dir / "hf_cache", ignore_errors=True)
    return result


def run_labelfix(labelfix: list[str], template: Path, name: str, run_dir: Path) -> tuple[dict,
                                                                                          Path]:
    run_dir.mkdir(parents=True)
    db = run_dir / "export.db"
    shutil.copyfile(template, db)
    out = run_dir / "out"
    result = measure([*labelfix, "--db", str(db), "export", name, "--out", str(out),
                      "--format", "arrow", "--json"], run_dir)
    return result, out


def run_stages(python: str, template: Path, name: str, run_dir: Path) -> dict[str, float]:
    run_dir.mkdir(parents=True)
    db = run_dir / "export.db"
    shutil.copyfile(template, db)
    script = run_dir / "stages.py"
    script.write_text(STAGES_SCRIPT)
    done = subprocess.run([python, str(script), "--db", str(db), "export", name, "--out",
                           str(run_dir / "out"), "--format", "arrow", "--json"],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"FAILED stage timing run:\n{done.stderr}")
    shutil.rmtree(run_dir / "out", ignore_errors=True)
    return json.loads(done.stderr.strip().splitlines()[-1])


def verify(out: Path, csv_path: Path, chosen: dict[int, str], rows: int) -> str:
    """load_from_disk(out) == the CSV with exactly the chosen rows relabelled; else exit 1."""
    import pyarrow.csv as pacsv
    from datasets import load_from_disk

    source = pacsv.read_csv(csv_path)
    exported = load_from_disk(str(out))
    problems = []
    if exported.num_rows != rows:
        problems.append(f"{exported.num_rows} rows, expected {rows}")
    else:
        table = exported.data.table
        if not table.column("text").equals(source.column("text")):
            problems.append("texts differ from the CSV's")
        new = np.asarray(table.column("label").to_pylist(), dtype=object)
        old = np.asarray(source.column("label").to_pylist(), dtype=object)
        changed = np.flatnonzero(new != old)
        expected = np.array(sorted(chosen), dtype=np.int64)
        if not np.array_equal(changed, expected):
            problems.append(f"labels differ at {len(changed)} rows, expected exactly the "
                            f"{len(expected)} corrected rows")
        wrong = [r for r in expected.tolist() if new[r] != chosen[r]]
        if wrong:
            problems.append(f"{len(wrong)} corrected rows do not hold the sheet's label "
                            f"(first: row {wrong[0]})")
    if problems:
        sys.exit(f"CORRECTNESS FAILED for {out}: " + "; ".join(problems))
    return (f"ok: {exported.num_rows:,} rows, texts equal, labels differ from the CSV at "
            f"exactly the {len(chosen):,} corrected rows, each with the sheet's label")


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--corrections", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-from-csv", action="store_true",
                        help="skip the secondary Dataset.from_csv baseline")
    parser.add_argument("--stages", type=int, default=0, metavar="N",
                        help="also time labelfix's export stages in-process N times (after the "
                        "timed runs) and print the medians")
    parser.add_argument("--labelfix-cmd", default=None, metavar="CMD",
                        help="the labelfix command to time, split on spaces "
                        "[default: the venv's labelfix]")
    parser.add_argument("--also", action="append", default=[], metavar="NAME=CMD",
                        help="another labelfix command (e.g. a patched prototype) to time and "
                        "verify in the same alternating loop; repeatable")
    args = parser.parse_args()

    if not Path(GNU_TIME).is_file():
        sys.exit(f"{GNU_TIME} is missing: apt-get install -y time")
    python = sys.executable
    if args.labelfix_cmd:
        labelfix = args.labelfix_cmd.split()
    else:
        found = shutil.which("labelfix", path=str(Path(python).parent))
        if found is None:
            sys.exit("labelfix is not installed next to this Python; use the project's venv")
        labelfix = [found]

    csv_path, npy_path = make_data(args.rows, args.seed)
    template, chosen = make_template(labelfix, csv_path, npy_path, args.corrections)
    name = csv_path.stem
    runs_root = WORK / "export_runs" / time.strftime("%Y%m%d-%H%M%S")
    routes = ["pandas"] if args.no_from_csv else ["pandas", "from_csv"]

    commands = {"labelfix": labelfix}
    for item in args.also:
        label, _, command = item.partition("=")
        if not command:
            sys.exit(f"--also {item!r}: expected NAME=CMD")
        commands[label] = command.split()
    results: dict[str, list[dict]] = {**{c: [] for c in commands}, **{r: [] for r in routes}}
    check = ""
    for repeat in range(args.repeats):
        # Alternate the order so neither side always runs on a warmer page cache.
        order = [*commands, *routes] if repeat % 2 == 0 else [*routes, *reversed(commands)]
        for who in order:
            run_dir = runs_root / f"{repeat}_{who}"
            if who in commands:
                result, out = run_labelfix(commands[who], template, name, run_dir)
                check = verify(out, csv_path, chosen, args.rows)
                shutil.rmtree(out, ignore_errors=True)
            else:
                result = run_baseline(python, who, csv_path, run_dir)
                if result["rows"] != args.rows:
                    sys.exit(f"baseline {who} saved {result['rows']} rows")
            results[who].append(result)
            extra = f" (save_to_disk {result['save_s']:.2f} s)" if "save_s" in result else ""
            print(f"repeat {repeat} {who:>10}: {result['wall']:.2f} s{extra}, "
                  f"peak {result['rss_mib']:.0f} MiB", file=sys.stderr)
    shutil.rmtree(runs_root, ignore_errors=True)

    lf = results["labelfix"]
    base = results["pandas"]
    lf_s, base_s = _median([r["wall"] for r in lf]), _median([r["wall"] for r in base])
    save_s = _median([r["save_s"] for r in base])
    ratio = lf_s / base_s
    ratios = [a["wall"] / b["wall"] for a, b in zip(lf, base, strict=True)]
    verdict = "ok" if ratio <= TARGET else "MISSED"
    print(f"\nMeasured {date.today().isoformat()}: {' '.join(sys.argv)}; machine "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, load average "
          f"{os.getloadavg()[0]:.1f}")
    print("\n| rows | corrections | baseline s (pandas, whole process) | save_to_disk only s "
          "| labelfix s | ratio (<= 1.5) | baseline peak MiB | labelfix peak MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.rows:,} | {args.corrections:,} | {base_s:.2f} | {save_s:.2f} | {lf_s:.2f} "
          f"| **{ratio:.2f} {verdict}** | {_median([r['rss_mib'] for r in base]):.0f} "
          f"| {_median([r['rss_mib'] for r in lf]):.0f} |")
    print(f"\nMedians of {args.repeats}. Per-repeat labelfix/baseline ratios: "
          + ", ".join(f"{r:.2f}" for r in ratios)
          + f". CPU s (user+sys): baseline {_median([r['cpu'] for r in base]):.2f}, "
          f"labelfix {_median([r['cpu'] for r in lf]):.2f}. Save_to_disk-only ratio "
          f"(labelfix whole process / in-process save): {lf_s / save_s:.2f}.")
    if "from_csv" in results:
        fc = results["from_csv"]
        fc_s = _median([r["wall"] for r in fc])
        print(f"Secondary baseline Dataset.from_csv (empty cache) + save_to_disk: {fc_s:.2f} s "
              f"(save_to_disk {_median([r['save_s'] for r in fc]):.2f} s, peak "
              f"{_median([r['rss_mib'] for r in fc]):.0f} MiB); labelfix / it = "
              f"{lf_s / fc_s:.2f}.")
    for label in list(commands)[1:]:
        other = results[label]
        other_s = _median([r["wall"] for r in other])
        print(f"{label} ({' '.join(commands[label])}): {other_s:.2f} s, ratio vs baseline "
              f"{other_s / base_s:.2f} (per repeat "
              + ", ".join(f"{a['wall'] / b['wall']:.2f}" for a, b in zip(other, base, strict=True))
              + f"), peak {_median([r['rss_mib'] for r in other]):.0f} MiB, CPU s "
              f"{_median([r['cpu'] for r in other]):.2f}.")
    print(f"Correctness: {check} (every labelfix run checked)")
    if args.stages:
        stage_runs = [run_stages(python, template, name, runs_root / f"stages_{i}")
                      for i in range(args.stages)]
        shutil.rmtree(runs_root, ignore_errors=True)
        print(f"\nlabelfix export stages, in-process, inclusive seconds (median of {args.stages};"
              " nested stages are also counted in their parents):\n")
        print("| stage | seconds |\n|---|---:|")
        order = ["imports (python start to CLI ready)", "export.run_export", "export._plan",
                 "export.standing_verdicts", "export.load", "data._read_delimited",
                 "data._text_array", "data._encode_labels", "data.fingerprint",
                 "export._corrected_labels", "export._output_table",
                 "import datasets (first use, in _as_dataset)", "export._as_dataset",
                 "export.fingerprint", "export._write", "export._record",
                 "export._write_changelog", "Session.flush (incl. autoflush)",
                 "export._write_manifest", "process (python start to exit)"]
        for key in order + [k for k in stage_runs[0] if k not in order]:
            print(f"| {key} | {_median([r.get(key, 0.0) for r in stage_runs]):.3f} |")
    if ratio > TARGET:
        sys.exit(2)


if __name__ == "__main__":
    main()
