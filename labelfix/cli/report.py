"""labelfix report: an audit and its review at a glance, as one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path

import typer

from labelfix.cli._common import ProgressReporter, errors_to_exit, get_store, print_json


def report(
    ctx: typer.Context,
    audit: int | None = typer.Argument(
        None, metavar="[AUDIT]", help="The audit id [default: the newest complete audit]."),
    out: Path = typer.Option(
        Path("report.html"), "--out", help="The HTML file to write (replaced if it exists).",
        show_default=True),
    png_dir: Path | None = typer.Option(
        None, "--png-dir", metavar="DIR", help="Also write each figure as a PNG in this folder."),
    bucket_size: int = typer.Option(
        50, "--bucket-size", min=1, show_default=True,
        help="Candidates per rank bucket in the precision-by-rank figure."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Write an HTML report of an audit and its review: the estimated noise matrix, label
    quality, candidates by class pair, review progress and measured precision by rank,
    annotators and their agreement, and the audit's facts. Images are inline: the page opens
    offline."""
    from labelfix.report import write_report

    with errors_to_exit(), ProgressReporter(quiet=as_json) as reporter:
        result = write_report(get_store(ctx), audit, out=out, png_dir=png_dir,
                              bucket_size=bucket_size, on_event=reporter)
    t = result.tally
    if as_json:
        print_json({
            "audit_id": result.audit_id, "path": str(result.path),
            "png_dir": None if result.png_dir is None else str(result.png_dir),
            "sections": result.sections, "reviewed": t.reviewed, "pending": t.pending,
            "corrected": t.corrected, "confirmed": t.confirmed, "discarded": t.discarded,
            "precision": t.precision, "automatic": t.automatic,
            "precision_people": t.precision_people,
        })
        return
    precision = "n/a" if t.precision is None else f"{100 * t.precision:.1f}%"
    typer.echo(f"Report of audit {result.audit_id} ({result.dataset} v{result.version}) "
               f"written to {result.path}")
    typer.echo(f"Reviewed {t.reviewed} of {t.total} candidates ({t.corrected} corrected, "
               f"{t.confirmed} confirmed, {t.discarded} discarded); precision {precision}")
    if result.png_dir is not None:
        typer.echo(f"{len(result.pngs)} figure(s) written to {result.png_dir}")
