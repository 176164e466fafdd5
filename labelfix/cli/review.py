"""labelfix review: judge candidates in the terminal, accept the model's clearest ones, or write
a sheet to fill in elsewhere."""

from __future__ import annotations

import getpass
import shutil
import textwrap
from pathlib import Path
from typing import TextIO

import typer

from labelfix.cli._common import errors_to_exit, get_store

MAX_TEXT_LINES = 12
KEYS_HELP = (
    "Enter/a accept the suggestion · k keep the given label · 1-{k} choose a label · "
    "d discard (ambiguous) · s skip · u undo · q quit · ? help"
)


def review(
    ctx: typer.Context,
    audit: int | None = typer.Argument(
        None, metavar="[AUDIT]", help="The audit to review [default: the newest complete one]."),
    sheet: Path | None = typer.Option(
        None, "--sheet", metavar="FILE.csv",
        help="Write the pending candidates to a CSV to fill in (verdict: relabel/confirm/discard,"
        " label), then import it with labelfix sync --backend sheet --sheet FILE.csv."),
    accept_suggested: bool = typer.Option(
        False, "--accept-suggested", help="Record the model's label for the top candidates "
        "without asking (needs --top)."),
    top: int | None = typer.Option(
        None, "--top", min=1, help="With --accept-suggested: how many of the best-ranked "
        "pending candidates."),
    min_margin: float = typer.Option(
        0.0, "--min-margin", min=0.0, max=1.0,
        help="With --accept-suggested: only where the suggested label's probability exceeds "
        "the given label's by at least this much."),
    annotator: str | None = typer.Option(
        None, "--annotator", help="Who is reviewing [default: the OS user; auto:<model> with "
        "--accept-suggested]."),
) -> None:
    """Review candidates one at a time in the terminal, highest rank first.

    Every verdict is saved at once: quit (or lose the connection) at any point and the next
    labelfix review resumes with the first candidate not yet judged.
    """
    from labelfix import review as use_case

    store = get_store(ctx)
    with errors_to_exit():
        if sheet is not None:
            written = use_case.write_sheet(store, sheet, audit)
            typer.echo(f"Wrote {written} candidate(s) to {sheet}. Fill in verdict "
                       "(relabel/confirm/discard) and label, then run: "
                       f"labelfix sync --backend sheet --sheet {sheet}")
            return
        if accept_suggested:
            if top is None:
                from labelfix.cli._common import fail

                raise fail("--accept-suggested needs --top N (how many candidates)", 2)
            accepted, skipped = use_case.accept_suggested(
                store, audit, top=top, min_margin=min_margin, annotator=annotator)
            typer.echo(f"Accepted the suggested label for {accepted} candidate(s)"
                       + (f"; {skipped} below --min-margin {min_margin} left for people"
                          if skipped else "") + ".")
            return
        _interactive(store, audit, annotator or _os_user())


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in containers without a passwd entry
        return "unknown"


def _read_key(stdin: TextIO, prompt: str) -> str | None:
    """One line from stdin (None at end of input), so it works in any terminal and pipe."""
    typer.echo(prompt, nl=False)
    line = stdin.readline()
    if not line:
        typer.echo("")
        return None
    return line.strip().lower()


def _show(item: object, queue: object, position: int, relabelled: int) -> None:
    from labelfix.review import ReviewItem, ReviewQueue

    assert isinstance(item, ReviewItem) and isinstance(queue, ReviewQueue)  # noqa: S101
    names = queue.label_names
    width = min(100, shutil.get_terminal_size((100, 24)).columns)
    typer.echo("")
    typer.secho(f"[{position} of {queue.total}] relabelled so far: {relabelled} · "
                f"rank {item.rank} · row {item.row} · quality {item.label_quality:.3f}",
                bold=True)
    text = item.text if item.text_pair is None else f"{item.text}\n  ⟷ {item.text_pair}"
    lines = []
    for paragraph in text.split("\n"):
        lines.extend(textwrap.wrap(" ".join(paragraph.split()), width=width - 2) or [""])
    for line in lines[:MAX_TEXT_LINES]:
        typer.echo(f"  {line}")
    if len(lines) > MAX_TEXT_LINES:
        typer.echo(f"  … ({len(lines) - MAX_TEXT_LINES} more lines)")
    typer.echo(f"Given: {names[item.given_label]}")
    order = sorted(range(len(names)), key=lambda k: -float(item.probabilities[k]))
    typer.echo("Model: " + "  ".join(
        f"{k + 1} {names[k]} {float(item.probabilities[k]):.2f}" for k in order[:5]))
    if len(names) > 5:
        typer.echo("Labels: " + "  ".join(f"{k + 1} {n}" for k, n in enumerate(names)))


def _interactive(store: object, audit: int | None, annotator: str) -> None:
    from labelfix import review as use_case

    queue = use_case.load_queue(store, audit)  # type: ignore[arg-type]
    names = queue.label_names
    if not queue.items:
        typer.echo(f"Nothing left to review in audit {queue.audit_id}: "
                   f"{queue.reviewed} of {queue.total} judged.")
        return
    typer.echo(f"Reviewing audit {queue.audit_id} of {queue.dataset} as {annotator}: "
               f"{len(queue.items)} of {queue.total} candidates left.")
    typer.echo(KEYS_HELP.format(k=len(names)))
    import click

    # One reader for the whole session: a new wrapper per read would lose buffered input.
    stdin = click.get_text_stream("stdin")
    done: list[tuple[int, int, str]] = []  # (annotation id, index, decision)
    relabelled = queue.relabelled
    index = 0
    while index < len(queue.items):
        item = queue.items[index]
        _show(item, queue, queue.reviewed + len(done) + 1, relabelled)
        suggestion = names[item.suggested_label]
        key = _read_key(stdin, f"[a]ccept {suggestion} · [k]eep {names[item.given_label]} · "
                        f"[1-{len(names)}] · [d]iscard · [s]kip · [u]ndo · [q]uit > ")
        if key is None or key == "q":
            break
        decision: str | None = None
        label: int | None = None
        if key in ("", "a"):
            decision, label = "relabel", item.suggested_label
        elif key == "k":
            decision = "confirm"
        elif key == "d":
            decision = "discard"
        elif key.isdigit() and 1 <= int(key) <= len(names):
            decision, label = "relabel", int(key) - 1
        elif key == "s":
            index += 1
            continue
        elif key == "u":
            if not done:
                typer.echo("Nothing to undo in this session.")
                continue
            annotation_id, index, last = done.pop()
            use_case.undo(store, annotation_id, annotator=annotator)  # type: ignore[arg-type]
            relabelled -= last == "relabel"
            typer.echo("Undone.")
            continue
        else:
            typer.echo(KEYS_HELP.format(k=len(names)))
            continue
        if decision == "relabel" and label == item.given_label:
            decision, label = "confirm", None
        annotation_id = use_case.record(store, item, decision=decision,  # type: ignore[arg-type]
                                        label=label, annotator=annotator)
        done.append((annotation_id, index, decision))
        relabelled += decision == "relabel"
        index += 1
    judged = queue.reviewed + len(done)
    typer.echo(f"Saved. {judged} of {queue.total} candidates judged, {relabelled} relabelled."
               + (" Run labelfix review again to go on." if judged < queue.total else ""))
