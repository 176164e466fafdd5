"""labelfix audits: every scan on record."""

from __future__ import annotations

import typer

from labelfix.cli._common import errors_to_exit, fixed_table, get_store, print_json, stdout_console


def audits(
    ctx: typer.Context,
    dataset: str | None = typer.Option(None, "--dataset", help="Only this dataset's audits."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list on stdout."),
) -> None:
    """List the audits (scans) in the database, oldest first."""
    from labelfix.store.queries import list_audits

    with errors_to_exit(), get_store(ctx).session() as session:
        rows = list_audits(session, dataset=dataset)
    if as_json:
        print_json([
            {"audit_id": r.audit_id, "dataset": r.dataset, "version": r.version,
             "model": r.model, "total": r.total, "candidates": r.candidates,
             "status": r.status, "created_at": r.created_at}
            for r in rows
        ])
        return
    if not rows:
        typer.echo("No audits yet; run `labelfix scan SOURCE`.")
        return
    headers = ("Audit", "Dataset", "Ver", "Rows", "Flagged", "Acc", "Status", "Model")
    cells = [
        [str(r.audit_id), r.dataset, str(r.version),
         "" if r.total is None else str(r.total),
         "" if r.candidates is None else str(r.candidates),
         "" if r.accuracy is None else f"{100 * r.accuracy:.1f}%", r.status, r.model]
        for r in rows
    ]
    console = stdout_console()
    numeric = {"Audit", "Ver", "Rows", "Flagged", "Acc"}
    console.print(fixed_table(headers, cells, width=console.width, right_aligned=numeric,
                              wrap_last=True))
    for r in rows:
        if r.report:
            typer.echo(f"Report of audit {r.audit_id}: {r.report}")
