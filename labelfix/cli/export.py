"""labelfix export: publish the corrected data as the next version of the dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from labelfix.cli._common import ProgressReporter, errors_to_exit, get_store, print_json


def export(
    ctx: typer.Context,
    dataset: str | None = typer.Argument(
        None, metavar="DATASET", help="The dataset to export [default: the only one]."),
    out: Path = typer.Option(..., "--out", help="The new version's folder (must not exist)."),
    fmt: str = typer.Option(
        "arrow", "--format", metavar="arrow|parquet|csv|jsonl",
        help="arrow: datasets.save_to_disk (load with load_from_disk); the others load with "
        "datasets.load_dataset(format, data_files=...)."),
    drop_discarded: bool = typer.Option(
        False, "--drop-discarded", help="Leave out rows reviewers discarded (the changelog "
        "still lists them)."),
    push_to_hub: str | None = typer.Option(
        None, "--push-to-hub", metavar="REPO",
        help="Also upload the version to this Hugging Face dataset repo and tag it "
        "(token from HF_TOKEN)."),
    private: bool = typer.Option(False, "--private", help="With --push-to-hub: a private repo."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Write the source data with every correction applied as the next version, with
    corrections.csv (the changelog) and labelfix.json (provenance) beside it."""
    from labelfix.export import push_to_hub as push
    from labelfix.export import run_export

    with errors_to_exit(), ProgressReporter() as reporter:
        result = run_export(get_store(ctx), dataset, out=out, fmt=fmt,
                            drop_discarded=drop_discarded, on_event=reporter)
        if push_to_hub and result.path is not None and result.semver is not None:
            push(Path(result.path), push_to_hub, semver=result.semver, private=private)
    if as_json:
        print_json({"dataset": result.dataset, "version": result.version, "path": result.path,
                    "rows": result.rows, "corrections_applied": result.corrections_applied})
        return
    if result.nothing_new:
        return
    dropped = f", {result.discarded_dropped} discarded rows left out" \
        if result.discarded_dropped else ""
    typer.echo(f"Version {result.version} of {result.dataset} ({result.semver}): "
               f"{result.rows} rows, {result.corrections_applied} new correction(s){dropped}, "
               f"written to {result.path}")
