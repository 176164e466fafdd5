"""labelfix history: who changed which label, when, and why."""

from __future__ import annotations

import typer

from labelfix.cli._common import errors_to_exit, fixed_table, get_store, print_json, stdout_console


def history(
    ctx: typer.Context,
    dataset: str | None = typer.Argument(
        None, metavar="[DATASET]", help="Only this dataset's corrections [default: all]."),
    row: int | None = typer.Option(None, "--row", min=0, help="Only this row (0-based)."),
    show_versions: bool = typer.Option(
        False, "--versions", help="List the dataset's versions with their counts instead."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list on stdout."),
) -> None:
    """List label corrections, newest first, with the annotator, backend and audit."""
    from labelfix.sync import history as load_history

    if show_versions:
        _versions(ctx, dataset, as_json=as_json)
        return
    with errors_to_exit(), get_store(ctx).session() as session:
        entries = load_history(session, dataset=dataset, row=row)
    if as_json:
        print_json([
            {"row": e.row, "old_label": e.old_label, "new_label": e.new_label,
             "annotator": e.annotator, "backend": e.backend, "audit_id": e.audit_id,
             "reviewed_at": e.reviewed_at, "version": e.version}
            for e in entries
        ])
        return
    if not entries:
        typer.echo("No corrections yet.")
        return
    headers = ("Row", "Old -> new", "Backend", "Audit", "Version", "Reviewed", "Annotator")
    cells = [
        [str(e.row), f"{e.old_label} -> {e.new_label}", e.backend,
         "" if e.audit_id is None else str(e.audit_id),
         "-" if e.version is None else str(e.version),
         e.reviewed_at.strftime("%Y-%m-%d"),  # type: ignore[attr-defined]
         e.annotator]
        for e in entries
    ]
    console = stdout_console()
    console.print(fixed_table(headers, cells, width=console.width,
                              right_aligned={"Row", "Audit", "Version"}, wrap_last=True))


def _versions(ctx: typer.Context, dataset: str | None, *, as_json: bool) -> None:
    from labelfix.sync import versions

    with errors_to_exit(), get_store(ctx).session() as session:
        entries = versions(session, dataset=dataset)
    if as_json:
        print_json([
            {"dataset": e.dataset, "version": e.version, "parent": e.parent, "rows": e.rows,
             "corrections_applied": e.corrections_applied,
             "discarded_dropped": e.discarded_dropped, "path": e.location, "format": e.format,
             "created_at": e.created_at, "report": e.report}
            for e in entries
        ])
        return
    if not entries:
        typer.echo("No datasets yet; run `labelfix scan SOURCE`.")
        return
    headers = ("Dataset", "Version", "Rows", "Corrections", "Dropped", "Created", "Location")
    cells = [
        [e.dataset, str(e.version), str(e.rows), str(e.corrections_applied),
         str(e.discarded_dropped), e.created_at.strftime("%Y-%m-%d"),  # type: ignore[attr-defined]
         e.location or ""]
        for e in entries
    ]
    console = stdout_console()
    console.print(fixed_table(headers, cells, width=console.width, wrap_last=True,
                              right_aligned={"Version", "Rows", "Corrections", "Dropped"}))
    for e in entries:
        if e.report:
            typer.echo(f"Report of version {e.version} of {e.dataset}: {e.report}")
