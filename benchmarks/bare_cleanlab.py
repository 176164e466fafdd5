"""The reference that ``labelfix scan --probs`` is held to (see bench_scan.py).

    python benchmarks/bare_cleanlab.py DATA.csv PROBS.npy OUT_DIR

Reads the CSV with pandas (labels mapped to codes in sorted order, as labelfix does), the matrix
with ``numpy.load``, runs ``cleanlab.filter.find_label_issues`` with the default filter and
``n_jobs`` = the CPU count, writes the matrix with ``numpy.save`` (what labelfix must keep) and
the flagged rows (for the benchmark's equality check; a few hundred KiB) into OUT_DIR.
"""

import os
import sys

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues


def main() -> None:
    csv_path, probs_path, out_dir = sys.argv[1:4]
    frame = pd.read_csv(csv_path)
    label_names = sorted(frame["label"].unique())
    labels = pd.Categorical(frame["label"], categories=label_names).codes.astype(np.int64)
    pred_probs = np.load(probs_path)
    try:
        n_jobs = len(os.sched_getaffinity(0))
    except AttributeError:
        n_jobs = os.cpu_count() or 1
    mask = find_label_issues(labels, pred_probs, n_jobs=n_jobs)
    np.save(os.path.join(out_dir, "matrix.npy"), pred_probs)
    np.save(os.path.join(out_dir, "rows.npy"), np.flatnonzero(mask))
    print(int(mask.sum()))


if __name__ == "__main__":
    main()
