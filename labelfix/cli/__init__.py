"""The labelfix command line. The only part of labelfix that prints or exits."""

from __future__ import annotations

import typer

from labelfix.cli import (
    audits,
    candidates,
    db,
    export,
    history,
    report,
    review,
    scan,
    sync,
)
from labelfix.cli._common import AppState, setup_logging

app = typer.Typer(
    name="labelfix",
    help="Find label errors in a classification dataset, review them, and publish the "
    "corrected data with its history.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
    # Help texts say "[default: ...]"; rich markup would swallow that as a tag.
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from labelfix import __version__

        typer.echo(f"labelfix {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    db: str = typer.Option(
        "labelfix.db", "--db", envvar="LABELFIX_DB", metavar="URL|PATH",
        help="The labelfix database: a SQLite file path or any SQLAlchemy URL.",
        show_default=True,
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Log what labelfix and its HTTP client do on stderr "
        "(API keys are masked)."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    setup_logging(verbose)
    ctx.obj = AppState(db=db, verbose=verbose)


app.command("scan")(scan.scan)
app.command("candidates")(candidates.candidates)
app.command("audits")(audits.audits)
app.command("sync")(sync.sync)
app.command("review")(review.review)
app.command("export")(export.export)
app.command("report")(report.report)
app.command("history")(history.history)
app.add_typer(db.app, name="db")


def main() -> None:
    try:
        app()
    except BrokenPipeError:
        from labelfix.cli._common import _quiet_broken_pipe

        _quiet_broken_pipe()
        raise SystemExit(141) from None
