"""labelfix sync: push candidates to a review server, pull people's verdicts back."""

from __future__ import annotations

from pathlib import Path

import typer

from labelfix.cli._common import ProgressReporter, errors_to_exit, get_store, print_json

BACKEND_HELP = (
    "The review backend: rubrix (RUBRIX_API_URL, RUBRIX_API_KEY, RUBRIX_WORKSPACE; also "
    "Argilla 1.x servers), argilla (Argilla 2.x: ARGILLA_API_URL, ARGILLA_API_KEY, "
    "ARGILLA_WORKSPACE), label-studio (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY: a legacy API "
    "token), sheet (with --sheet: import a filled-in sheet, or write one with --push-only), "
    "local (labelfix review records verdicts as they are made: nothing to sync)."
)


def sync(
    ctx: typer.Context,
    dataset: str | None = typer.Argument(
        None, metavar="[DATASET]", help="The dataset to sync [default: the only one]."),
    backend: str = typer.Option(..., "--backend", help=BACKEND_HELP),
    push_only: bool = typer.Option(False, "--push-only", help="Only push candidates."),
    pull_only: bool = typer.Option(False, "--pull-only", help="Only pull verdicts."),
    sheet: Path | None = typer.Option(
        None, "--sheet", metavar="FILE.csv", help="With --backend sheet: the sheet file."),
    remote_name: str | None = typer.Option(
        None, "--remote-name", help="The dataset on the server [default: <dataset>_label_errors]."),
    legacy_headers: str | None = typer.Option(
        None, "--legacy-headers", metavar="rubrix|argilla",
        help="Header style of a Rubrix-API server [default: detected from /api/_info]."),
    insecure: bool = typer.Option(
        False, "--insecure", help="Do not verify TLS certificates (a warning is printed)."),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON on stdout."),
) -> None:
    """Push candidates not yet pushed, pull verdicts not yet pulled, record corrections.

    Safe to rerun after a failure: what the server accepted is remembered, and a verdict
    pulled twice is recorded once.
    """
    from labelfix.backends.registry import open_backend
    from labelfix.sync import run_sync

    if push_only and pull_only:
        from labelfix.cli._common import fail

        raise fail("--push-only and --pull-only exclude each other; pass at most one", 2)
    if backend in ("sheet", "local"):
        counts = _sync_locally(ctx, backend, dataset=dataset, sheet=sheet, push_only=push_only)
        if as_json:
            print_json(counts)
        else:
            typer.echo(f"{backend}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return
    with errors_to_exit(), ProgressReporter() as reporter:
        remote = open_backend(backend, insecure=insecure, legacy_headers=legacy_headers,
                              on_event=reporter)
        try:
            result = run_sync(get_store(ctx), remote, dataset=dataset, remote_name=remote_name,
                              push=not pull_only, pull=not push_only, on_event=reporter)
        finally:
            remote.close()
    counts = {"pushed": result.pushed, "pulled": result.pulled,
              "corrections": result.corrections, "confirmed": result.confirmed,
              "discarded": result.discarded, "failed": result.failed}
    if as_json:
        print_json(counts)
        return
    typer.echo(f"{result.dataset} <-> {result.backend} ({result.remote_name}): "
               + ", ".join(f"{key} {value}" for key, value in counts.items()))


def _sync_locally(ctx: typer.Context, backend: str, *, dataset: str | None,
                  sheet: Path | None, push_only: bool) -> dict[str, int]:
    from labelfix import review as use_case
    from labelfix.cli._common import fail
    from labelfix.cli.review import _os_user

    counts = {"pushed": 0, "pulled": 0, "corrections": 0, "confirmed": 0, "discarded": 0,
              "failed": 0}
    if backend == "local":
        typer.echo("labelfix review records verdicts as they are made; nothing to sync.",
                   err=True)
        return counts
    if sheet is None:
        raise fail("--backend sheet needs --sheet FILE.csv", 2)
    store = get_store(ctx)
    with errors_to_exit():
        if push_only:
            counts["pushed"] = use_case.write_sheet(store, sheet)
            return counts
        imported = use_case.import_sheet(store, sheet, dataset=dataset,
                                         default_annotator=_os_user())
    counts.update(pulled=imported.recorded, corrections=imported.corrections,
                  confirmed=imported.confirmed, discarded=imported.discarded)
    return counts
