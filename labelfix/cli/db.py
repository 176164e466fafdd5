"""labelfix db: the database's schema revision."""

from __future__ import annotations

import typer

from labelfix.cli._common import errors_to_exit, get_store

app = typer.Typer(help="Show or upgrade the database schema.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(ctx: typer.Context) -> None:
    """Create the database, or upgrade it to this labelfix's schema (labelfix also does this
    whenever it opens one)."""
    from labelfix.store.engine import current_revision, redact

    with errors_to_exit():
        store = get_store(ctx)
        engine = store.engine
        typer.echo(f"{redact(store.url)}: schema revision {current_revision(engine)} (head)")
        store.dispose()


@app.command("current")
def current(ctx: typer.Context) -> None:
    """Show the database's schema revision without changing anything."""
    from sqlalchemy import create_engine

    from labelfix.store.engine import current_revision, head_revision, redact

    with errors_to_exit():
        store = get_store(ctx)
        head = head_revision()
        engine = create_engine(store.url)
        try:
            revision = current_revision(engine)
        finally:
            engine.dispose()
        if revision is None:
            state = "empty: not a labelfix database yet (labelfix db upgrade creates it)"
        elif revision == head:
            state = "(head)"
        else:
            state = f"(head is {head}; run labelfix db upgrade)"
        typer.echo(f"{redact(store.url)}: schema revision {revision or 'none'} {state}".rstrip())
