"""labelfix scan: score every row, flag label-error candidates, record the audit."""

from __future__ import annotations

from pathlib import Path

import typer

from labelfix.cli._common import (
    ProgressReporter,
    candidate_table,
    errors_to_exit,
    get_store,
    print_json,
    stdout_console,
)

FILTER_HELP = ("cleanlab's filter_by: prune_by_noise_rate, prune_by_class, both, "
               "confident_learning, predicted_neq_given, low_normalized_margin, "
               "low_self_confidence.")
RANK_HELP = "cleanlab's ranking: self_confidence, normalized_margin, confidence_weighted_entropy."


def scan(
    ctx: typer.Context,
    source: str = typer.Argument(
        ..., metavar="SOURCE",
        help="A Hugging Face dataset id, a save_to_disk folder, a .csv/.tsv/.jsonl/.parquet "
        "file, or 'demo' (the AG News test split shipped with labelfix).",
    ),
    name: str | None = typer.Option(
        None, "--name", help="The name to record the dataset under [default: from SOURCE]."),
    split: str | None = typer.Option(None, "--split", help="The split to scan (hub datasets and "
                                     "DatasetDict folders)."),
    config: str | None = typer.Option(None, "--config", help="The hub dataset's configuration."),
    text_column: list[str] | None = typer.Option(
        None, "--text-column", help="The text column; give it twice for sentence pairs "
        "[default: text]."),
    label_column: str | None = typer.Option(
        None, "--label-column", help="The label column [default: label]."),
    labels: str | None = typer.Option(
        None, "--labels", metavar="A,B,C",
        help="Label names: names for integer labels (0, 1, ...) or the order of string labels."),
    probs: Path | None = typer.Option(
        None, "--probs", metavar="FILE",
        help="Predicted probabilities you already have: an N x K .npy, .csv or .parquet file, "
        "columns in label order."),
    probs_column: str | None = typer.Option(
        None, "--probs-column", metavar="COL",
        help="A column of the dataset holding each row's K probabilities as a list."),
    model: str | None = typer.Option(
        None, "--model", metavar="ID|PATH",
        help="A transformers sequence-classification model (hub id or local folder) whose "
        "probabilities to use; its labels are matched to the dataset's by name."),
    embed: str | None = typer.Option(
        None, "--embed", metavar="ID|PATH",
        help="A transformers encoder (sentence-transformers checkpoints too): out-of-fold "
        "logistic regression on its embeddings, for data no fine-tuned model exists for."),
    revision: str | None = typer.Option(
        None, "--revision", help="With --model/--embed: the hub branch, tag or commit."),
    label_map: str | None = typer.Option(
        None, "--label-map", metavar="MODEL=DATASET,...",
        help="With --model: model labels whose names differ from the dataset's."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1,
        help="Rows per batch [default: batches sized by a token budget]."),
    max_length: int | None = typer.Option(
        None, "--max-length", min=1, help="Truncate texts to this many tokens "
        "[default: the model's limit]."),
    device: str = typer.Option("auto", "--device", metavar="cpu|cuda|auto",
                               help="Where to run the model."),
    precision: str = typer.Option(
        "fp32", "--precision", metavar="fp32|bf16|fp16",
        help="bf16 (autocast, CPU or CUDA) and fp16 (CUDA) trade a little agreement for speed."),
    quantize: str | None = typer.Option(
        None, "--quantize", metavar="int8",
        help="Dynamic int8 quantization of the linear layers (CPU)."),
    check_agreement: int = typer.Option(
        0, "--check-agreement", metavar="N", min=0,
        help="With --precision or --quantize: also run fp32 on N rows and report how often the "
        "top label agrees."),
    engine: str = typer.Option(
        "local", "--engine", metavar="local|ray",
        help="Where --model/--embed run: in this process, or on a Ray actor pool (one model "
        "load per worker; needs pip install 'labelfix[ray]'). Same probabilities either way."),
    ray_address: str | None = typer.Option(
        None, "--ray-address", metavar="ADDR",
        help="With --engine ray: the cluster to join (ray.init(address=...), e.g. auto or "
        "ray://host:10001) [default: start a local Ray on this machine]."),
    num_workers: int | None = typer.Option(
        None, "--num-workers", metavar="N",
        help="With --engine ray: model workers (actors) [default: one per GPU with "
        "--num-gpus-per-worker, else one per 4 CPUs]."),
    num_gpus_per_worker: float = typer.Option(
        0.0, "--num-gpus-per-worker", metavar="G",
        help="With --engine ray: GPUs per worker (a fraction shares one); above 0 the workers "
        "run on CUDA."),
    low_memory: bool = typer.Option(
        False, "--low-memory",
        help="Find candidates with cleanlab's batched estimate over a memory-mapped matrix "
        "(an approximation of low_self_confidence filtering; --filter-by does not apply)."),
    low_memory_above: str | None = typer.Option(
        None, "--low-memory-above", metavar="SIZE",
        help="Use --low-memory automatically when the N x K float32 matrix is larger than SIZE "
        "(bytes, or e.g. 500MB, 2GB) [default: $LABELFIX_LOW_MEMORY_ABOVE or 2GiB]."),
    folds: int = typer.Option(
        5, "--folds", min=2, max=50,
        help="Folds of the out-of-fold logistic regression: on TF-IDF features (the baseline, "
        "used when nothing else gives probabilities) or on --embed embeddings."),
    filter_by: str = typer.Option("prune_by_noise_rate", "--filter-by", help=FILTER_HELP),
    rank_by: str = typer.Option("self_confidence", "--rank-by", help=RANK_HELP),
    push: str | None = typer.Option(
        None, "--push", metavar="BACKEND",
        help="Push the candidates for review right after the scan (as labelfix sync --push-only)."),
    remote_name: str | None = typer.Option(
        None, "--remote-name", help="With --push: the dataset on the server "
        "[default: <dataset>_label_errors]."),
    top: int = typer.Option(20, "--top", min=0, help="How many top candidates to show."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Scan a dataset for label errors with cleanlab's confident learning and record the audit.

    Prints the number of rows, the number of candidates and the top candidates; every row's
    probabilities and every candidate are kept in the database for review, sync and export.
    """
    from labelfix.data import SourceSpec
    from labelfix.events import Event
    from labelfix.scan import run_scan

    with errors_to_exit():
        from labelfix.models.inference import EngineOptions

        engine_options = EngineOptions(name=engine, address=ray_address,
                                       num_workers=num_workers,
                                       num_gpus_per_worker=num_gpus_per_worker)
        options = _inference_options(
            model or embed, revision=revision, label_map=label_map, batch_size=batch_size,
            max_length=max_length, device=device, precision=precision, quantize=quantize,
            check_agreement=check_agreement,
        )
        spec = SourceSpec(
            source=source, split=split, config=config,
            text_columns=tuple(text_column or ()), label_column=label_column,
            labels=_parse_labels(labels), probs_column=probs_column,
        )
        store = get_store(ctx)
        with ProgressReporter() as reporter:
            backend = None
            if push is not None:
                from labelfix.backends.registry import open_backend

                # Opened first: a missing server fails before minutes of scanning, not after.
                backend = open_backend(push, on_event=reporter)
            try:
                result = run_scan(
                    store, spec, name=name, probs_file=probs, folds=folds,
                    model=options if model else None, embed=options if embed else None,
                    engine=engine_options, filter_by=filter_by, rank_by=rank_by,
                    low_memory=low_memory, low_memory_above=low_memory_above, top=top,
                    on_event=reporter,
                )
                if backend is not None:
                    from labelfix.sync import run_sync

                    pushed = run_sync(store, backend, dataset=result.dataset,
                                      remote_name=remote_name, pull=False, on_event=reporter)
                    reporter(Event("info", message=(
                        f"Pushed {pushed.pushed} candidate(s) to {backend.name} "
                        f"({pushed.remote_name})"
                    )))
            finally:
                if backend is not None:
                    backend.close()
    if as_json:
        payload: dict[str, object] = {
            "audit_id": result.audit_id, "dataset": result.dataset, "total": result.total,
            "candidates": result.candidates, "model": result.model,
            "filter_by": result.filter_by, "accuracy": round(result.accuracy, 6),
        }
        if result.approximation is not None:
            # Only then: an exact scan keeps exactly the contract's keys.
            payload["approximation"] = result.approximation
        print_json(payload)
        return
    share = 100.0 * result.candidates / result.total if result.total else 0.0
    typer.echo(f"Total: {result.total}")
    typer.echo(f"Candidates: {result.candidates} ({share:.1f}%)")
    typer.echo(f"Accuracy of the probabilities: {100 * result.accuracy:.1f}% ({result.model})")
    if result.approximation is not None:
        typer.echo(f"Approximation: candidates from {result.approximation} (batched, "
                   "memory-mapped; estimates low_self_confidence filtering, not "
                   f"--filter-by {result.filter_by})")
    typer.echo(f"Audit {result.audit_id} of {result.dataset} (version {result.version}) recorded"
               f"{' with the stored probabilities' if result.probabilities_reused else ''}.")
    if result.top:
        rows = [vars(c) for c in result.top]
        console = stdout_console()
        title = f"Top {len(rows)} candidates"
        console.print(candidate_table(rows, width=console.width, title=title))
        if result.candidates > len(rows):
            typer.echo(f"All {result.candidates}: labelfix candidates {result.audit_id}")


def _inference_options(model: str | None, *, label_map: str | None, **options: object
                       ) -> object:
    if model is None:
        return None
    from labelfix.models.inference import InferenceOptions
    from labelfix.models.transformers import parse_label_map

    return InferenceOptions(model=model, label_map=parse_label_map(label_map) if label_map
                            else {}, **options)  # type: ignore[arg-type]


def _parse_labels(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(part.strip() for part in value.split(","))
