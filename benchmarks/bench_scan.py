"""Whole-process benchmark of ``labelfix scan FILE.csv --probs P.npy`` against bare cleanlab.

    python benchmarks/bench_scan.py [--rows 1000000] [--classes 20] [--repeats 2] [--seed 0]

Target (the issue): labelfix's wall time <= 1.5x and peak memory <= 2.0x those of
``benchmarks/bare_cleanlab.py`` (pandas.read_csv + numpy.load + cleanlab's find_label_issues +
numpy.save), both run as whole processes, alternately, in the same run.

Data (seeded, cached in benchmarks/_work/): a CSV ``text,label`` of short texts (5-12 words of
a small vocabulary plus the row number) with string labels ``class_00``.., and an (N, K) float32
.npy of probabilities shaped like a real model's: confident on the true class, with about 5% of
the given labels flipped to another class.

Memory: every run goes through ``/usr/bin/time -v``; its "Maximum resident set size" is the
largest RSS of any single process of the tree (wait4 semantics; cleanlab's fork()ed Pool workers
share the parent's pages copy-on-write, so the parent is the largest). A sampler also records
the peak over time of the tree's summed PSS (shared pages split between the processes sharing
them, so nothing is counted twice) from /proc/PID/smaps_rollup every --sample-ms.

Exits 1 if labelfix's candidates (``labelfix candidates --json``, the set of ``row``) differ
from cleanlab's flagged rows, or if a process fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "_work"
BARE = HERE / "bare_cleanlab.py"
GNU_TIME = "/usr/bin/time"
NOISE = 0.05
STAGES = ("load", "probabilities", "detect", "store", "total")


# --------------------------------------------------------------------------- data


def make_data(rows: int, classes: int, seed: int) -> tuple[Path, Path]:
    """The cached CSV and .npy for these parameters, generated on first use."""
    WORK.mkdir(parents=True, exist_ok=True)
    stem = f"scan_{rows}x{classes}_s{seed}"
    csv_path, npy_path = WORK / f"{stem}.csv", WORK / f"{stem}.npy"
    if csv_path.is_file() and npy_path.is_file():
        return csv_path, npy_path
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    # Mildly imbalanced classes.
    prior = 1.0 + rng.random(classes)
    prior /= prior.sum()
    truth = rng.choice(classes, size=rows, p=prior)
    # A model that is mostly confident and right: the true class gets a boost of 3..9 logits.
    logits = rng.normal(0.0, 1.0, size=(rows, classes))
    logits[np.arange(rows), truth] += rng.uniform(3.0, 9.0, size=rows)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    probs = probs.astype(np.float32)
    del logits
    # About 5% of the given labels are wrong.
    given = truth.copy()
    flip = rng.random(rows) < NOISE
    given[flip] = (truth[flip] + rng.integers(1, classes, size=int(flip.sum()))) % classes
    # Short texts: 5..12 words from a small vocabulary, plus the row number.
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "fe"]
    vocab = np.array(sorted({a + b + c for a in syllables for b in syllables
                             for c in syllables[:4]}))
    lengths = rng.integers(5, 13, size=rows)
    words = vocab[rng.integers(0, len(vocab), size=int(lengths.sum()))].tolist()
    texts, at = [], 0
    for row, n in enumerate(lengths.tolist()):
        texts.append(" ".join(words[at : at + n]) + f" {row}")
        at += n
    names = [f"class_{k:02d}" for k in range(classes)]
    tmp_csv, tmp_npy = csv_path.with_suffix(".csv.tmp"), npy_path.with_suffix(".tmp.npy")
    with tmp_csv.open("w", encoding="utf-8", newline="\n") as handle:
        handle.write("text,label\n")
        handle.writelines(f"{t},{names[g]}\n" for t, g in zip(texts, given.tolist(), strict=True))
    np.save(tmp_npy, probs)
    tmp_csv.replace(csv_path)
    tmp_npy.replace(npy_path)
    wrong = float((probs.argmax(axis=1) != given).mean())
    print(f"generated {csv_path.name} ({csv_path.stat().st_size / 2**20:.0f} MiB) and "
          f"{npy_path.name} ({npy_path.stat().st_size / 2**20:.0f} MiB) in "
          f"{time.perf_counter() - started:.1f} s; given label != argmax in {100 * wrong:.2f}%",
          file=sys.stderr)
    return csv_path, npy_path


# --------------------------------------------------------------------------- measuring


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                out.extend(int(p) for p in handle.read().split())
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    seen, todo = [], [pid]
    while todo:
        current = todo.pop()
        seen.append(current)
        todo.extend(_children(current))
    return seen


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeSampler(threading.Thread):
    """Peak over time of the summed PSS of a process tree (and its most processes at once)."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_kib = 0
        self.max_procs = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            pids = _tree(self.pid)
            self.peak_kib = max(self.peak_kib, sum(_pss_kib(p) for p in pids))
            self.max_procs = max(self.max_procs, len(pids))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def measure(cmd: list[str], *, out_dir: Path, sample_ms: int) -> dict:
    """Run one whole process under /usr/bin/time -v: wall seconds, peak RSS, peak tree PSS."""
    time_file = out_dir / "time.txt"
    full = [GNU_TIME, "-v", "-o", str(time_file), *cmd]
    stdout_path, stderr_path = out_dir / "stdout.txt", out_dir / "stderr.txt"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(full, stdout=out, stderr=err, cwd=ROOT)
        sampler = TreeSampler(process.pid, sample_ms / 1000) if sample_ms > 0 else None
        if sampler is not None:
            sampler.start()
        code = process.wait()
        wall = time.perf_counter() - started
        if sampler is not None:
            sampler.stop()
    if code != 0:
        sys.exit(f"FAILED ({code}): {' '.join(cmd)}\n{stderr_path.read_text(errors='replace')}")
    fields = {}
    for line in time_file.read_text().splitlines():
        key, _, value = line.strip().rpartition(": ")
        fields[key] = value
    return {
        "wall": wall,
        "rss_mib": int(fields["Maximum resident set size (kbytes)"]) / 1024,
        "pss_mib": (sampler.peak_kib / 1024) if sampler is not None else float("nan"),
        "procs": sampler.max_procs if sampler is not None else 0,
        "user": float(fields["User time (seconds)"]),
        "sys": float(fields["System time (seconds)"]),
        "stdout": stdout_path.read_text(errors="replace"),
        "stderr": stderr_path.read_text(errors="replace"),
    }


def run_bare(python: str, csv_path: Path, npy_path: Path, run_dir: Path, sample_ms: int):
    run_dir.mkdir(parents=True)
    result = measure([python, str(BARE), str(csv_path), str(npy_path), str(run_dir)],
                     out_dir=run_dir, sample_ms=sample_ms)
    rows = set(np.load(run_dir / "rows.npy").tolist())
    return result, rows


def run_labelfix(labelfix: list[str], csv_path: Path, npy_path: Path, run_dir: Path,
                 sample_ms: int):
    run_dir.mkdir(parents=True)
    db = run_dir / "bench.db"
    result = measure([*labelfix, "--db", str(db), "scan", str(csv_path), "--probs", str(npy_path),
                      "--json", "--top", "0"], out_dir=run_dir, sample_ms=sample_ms)
    summary = json.loads(result["stdout"])
    listed = subprocess.run([*labelfix, "--db", str(db), "candidates", str(summary["audit_id"]),
                             "--json"], capture_output=True, text=True, check=True, cwd=ROOT)
    rows = {c["row"] for c in json.loads(listed.stdout)}
    with sqlite3.connect(db) as connection:
        (raw,) = connection.execute("select timings from audits where id = ?",
                                    (summary["audit_id"],)).fetchone()
    result["timings"] = json.loads(raw) if isinstance(raw, str) else raw
    result["summary"] = summary
    if len(rows) != summary["candidates"]:
        sys.exit(f"labelfix scan reported {summary['candidates']} candidates, "
                 f"`candidates --json` lists {len(rows)}")
    return result, rows


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-ms", type=int, default=200,
                        help="PSS sampling interval of the process tree; 0 turns it off")
    parser.add_argument("--keep", action="store_true", help="keep each run's files (databases)")
    parser.add_argument("--labelfix-cmd", default=None, metavar="CMD",
                        help="the labelfix command to time, split on spaces (e.g. a patched entry "
                        "point: 'python /tmp/patched.py') [default: the venv's labelfix]")
    args = parser.parse_args()

    if not Path(GNU_TIME).is_file():
        sys.exit(f"{GNU_TIME} is missing: apt-get install -y time")
    bindir = Path(sys.executable).parent
    python = sys.executable
    if args.labelfix_cmd:
        labelfix = args.labelfix_cmd.split()
    else:
        found = shutil.which("labelfix", path=str(bindir)) or shutil.which("labelfix")
        if found is None:
            sys.exit("labelfix is not installed next to this Python; use the project's venv")
        labelfix = [found]

    csv_path, npy_path = make_data(args.rows, args.classes, args.seed)
    # Both read the files from the page cache, not whichever runs first from disk.
    for path in (csv_path, npy_path):
        with path.open("rb") as handle:
            while handle.read(64 << 20):
                pass

    runs_root = WORK / "runs" / time.strftime("%Y%m%d-%H%M%S")
    bare_runs, lf_runs = [], []
    for repeat in range(args.repeats):
        order = ("bare", "labelfix") if repeat % 2 == 0 else ("labelfix", "bare")
        for which in order:
            run_dir = runs_root / f"{repeat}-{which}"
            if which == "bare":
                result, bare_rows = run_bare(python, csv_path, npy_path, run_dir, args.sample_ms)
                bare_runs.append(result)
            else:
                result, lf_rows = run_labelfix(labelfix, csv_path, npy_path, run_dir,
                                               args.sample_ms)
                lf_runs.append(result)
            print(f"repeat {repeat} {which:8s}: {result['wall']:7.2f} s wall, "
                  f"{result['user']:.1f} s user, {result['sys']:.1f} s sys, "
                  f"max RSS {result['rss_mib']:.0f} MiB, peak tree PSS "
                  f"{result['pss_mib']:.0f} MiB ({result['procs']} procs)", file=sys.stderr)
            if not args.keep:
                shutil.rmtree(run_dir, ignore_errors=True)
        if lf_rows != bare_rows:
            only_lf, only_bare = sorted(lf_rows - bare_rows), sorted(bare_rows - lf_rows)
            sys.exit(f"CANDIDATES DIFFER: labelfix {len(lf_rows)}, cleanlab {len(bare_rows)}; "
                     f"only labelfix {only_lf[:10]} ({len(only_lf)}), "
                     f"only cleanlab {only_bare[:10]} ({len(only_bare)})")
    if not args.keep:
        shutil.rmtree(runs_root, ignore_errors=True)

    bare_s = _median([r["wall"] for r in bare_runs])
    lf_s = _median([r["wall"] for r in lf_runs])
    bare_rss = _median([r["rss_mib"] for r in bare_runs])
    lf_rss = _median([r["rss_mib"] for r in lf_runs])
    bare_pss = _median([r["pss_mib"] for r in bare_runs])
    lf_pss = _median([r["pss_mib"] for r in lf_runs])
    time_ratio, rss_ratio = lf_s / bare_s, lf_rss / bare_rss
    pss_ratio = lf_pss / bare_pss if bare_pss else float("nan")

    print(f"\n{date.today().isoformat()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, median of {args.repeats} alternating repeats\n")
    print("| rows | classes | bare s | labelfix s | time ratio (<= 1.5) | bare peak MiB "
          "| labelfix peak MiB | memory ratio (<= 2.0) | candidates bare | candidates labelfix |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.rows:,} | {args.classes} | {bare_s:.2f} | {lf_s:.2f} | "
          f"{time_ratio:.2f} {'ok' if time_ratio <= 1.5 else 'MISSED'} | {bare_rss:.0f} | "
          f"{lf_rss:.0f} | {rss_ratio:.2f} {'ok' if rss_ratio <= 2.0 else 'MISSED'} | "
          f"{len(bare_rows):,} | {len(lf_rows):,} |")
    print(f"\nPeak memory above is the max RSS of any one process (/usr/bin/time -v). Peak summed "
          f"PSS of the process tree (cleanlab's Pool workers included, shared pages split): "
          f"bare {bare_pss:.0f} MiB, labelfix {lf_pss:.0f} MiB, ratio {pss_ratio:.2f}.")
    bare_cpu = _median([r["user"] + r["sys"] for r in bare_runs])
    lf_cpu = _median([r["user"] + r["sys"] for r in lf_runs])
    bare_min, lf_min = min(r["wall"] for r in bare_runs), min(r["wall"] for r in lf_runs)
    print(f"CPU seconds (user+sys of the whole tree, median): bare {bare_cpu:.1f}, labelfix "
          f"{lf_cpu:.1f}, ratio {lf_cpu / bare_cpu:.2f}. Fastest runs: bare {bare_min:.2f} s, "
          f"labelfix {lf_min:.2f} s, ratio {lf_min / bare_min:.2f}. Load average at the end: "
          f"{os.getloadavg()[0]:.1f}.")
    print("\nlabelfix's own stage timings (audits.timings, seconds):\n")
    print("| repeat | " + " | ".join(STAGES) + " | process wall |")
    print("|---:|" + "---:|" * (len(STAGES) + 1))
    for index, run in enumerate(lf_runs):
        cells = " | ".join(f"{run['timings'].get(s, float('nan')):.2f}" for s in STAGES)
        print(f"| {index} | {cells} | {run['wall']:.2f} |")
    print(f"\nlabelfix's candidates equal cleanlab's flagged rows ({len(lf_rows):,}).")


if __name__ == "__main__":
    main()
