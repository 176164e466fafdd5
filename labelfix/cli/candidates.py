"""labelfix candidates: the label-error candidates of an audit."""

from __future__ import annotations

import typer

from labelfix.cli._common import (
    candidate_table,
    errors_to_exit,
    get_store,
    print_json,
    stdout_console,
)


def candidates(
    ctx: typer.Context,
    audit: int | None = typer.Argument(
        None, metavar="[AUDIT]", help="The audit id [default: the newest complete audit]."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Show at most this many."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list on stdout."),
) -> None:
    """List an audit's candidates, most likely label error first."""
    from labelfix.store.queries import (
        effective_status,
        get_audit,
        label_names_of,
        list_candidates,
    )
    from labelfix.sync import review_states

    with errors_to_exit(), get_store(ctx).session() as session:
        found = get_audit(session, audit)
        names = label_names_of(session, found)
        listed = list_candidates(session, audit_id=found.id, limit=limit)
        states = review_states(session, dataset_id=found.dataset_version.dataset_id,
                               rows=[c.row for c in listed])
        rows = [
            {
                "row": c.row, "text": c.text if c.text_pair is None else [c.text, c.text_pair],
                "given_label": names[c.given_label],
                "suggested_label": names[c.suggested_label],
                "label_quality": round(c.label_quality, 6), "rank": c.rank,
                "review_state": states.get(c.row, "pending"),
            }
            for c in listed
        ]
        status = effective_status(found)
        audit_id = found.id
    if as_json:
        print_json(rows)
        return
    if status != "complete":
        typer.echo(f"Audit {audit_id} is {status}; its candidates may be incomplete.", err=True)
    if not rows:
        typer.echo(f"Audit {audit_id} has no candidates.")
        return
    console = stdout_console()
    title = f"Audit {audit_id}: {len(rows)} candidates"
    console.print(candidate_table(rows, width=console.width, title=title))
