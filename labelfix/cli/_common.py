"""What every command shares: the store from --db, error mapping, progress on stderr, JSON."""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import typer

from labelfix.errors import LabelfixError
from labelfix.events import Event


@dataclass
class AppState:
    db: str | None = None
    verbose: bool = False


SECRET_VARIABLES = ("RUBRIX_API_KEY", "ARGILLA_API_KEY", "LABEL_STUDIO_API_KEY", "HF_TOKEN")


def redact(text: str) -> str:
    """``text`` with the value of every secret in the environment replaced by ***."""
    for variable in SECRET_VARIABLES:
        secret = os.environ.get(variable)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


class _RedactingFormatter:
    """Wraps a logging formatter so that no log line carries a key, whatever logged it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def format(self, record: Any) -> str:
        return redact(self._inner.format(record))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def setup_logging(verbose: bool) -> None:
    """--verbose: what labelfix and its HTTP client do, on stderr, keys masked.

    Without it, labelfix's handlers are removed, so that a verbose run earlier in the same
    process (tests, notebooks) leaves nothing behind.
    """
    import logging

    class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
        """Writes to whatever sys.stderr is now, not what it was when the handler was made."""

        @property  # type: ignore[override]
        def stream(self) -> Any:
            return sys.stderr

        @stream.setter
        def stream(self, value: Any) -> None:
            pass

    for name in ("labelfix", "httpx", "httpcore"):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "labelfix", False)]:
            logger.removeHandler(old)
        if not verbose:
            logger.setLevel(logging.NOTSET)
            continue
        handler = _Stderr()
        handler.labelfix = True  # type: ignore[attr-defined]
        handler.setFormatter(_RedactingFormatter(logging.Formatter(  # type: ignore[arg-type]
            "%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")))
        logger.setLevel(logging.DEBUG if name == "labelfix" else logging.INFO)
        logger.addHandler(handler)


def get_store(ctx: typer.Context) -> Any:
    from labelfix.store import Store, resolve_url

    state: AppState = ctx.find_root().obj or AppState()
    return Store(resolve_url(state.db))


def fail(message: str, code: int) -> typer.Exit:
    # One line, whatever the message holds: scripts grep stderr.
    typer.echo(f"Error: {redact(' '.join(message.split()))}", err=True)
    return typer.Exit(code)


@contextmanager
def errors_to_exit() -> Iterator[None]:
    """Turn labelfix errors into one line on stderr and their exit code; never a traceback.

    Set LABELFIX_DEBUG=1 to see the traceback of an unexpected error.
    """
    try:
        yield
    except LabelfixError as exc:
        raise fail(str(exc), exc.exit_code) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None
    except BrokenPipeError:
        _quiet_broken_pipe()
        raise typer.Exit(141) from None
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except Exception as exc:
        if os.environ.get("LABELFIX_DEBUG"):
            typer.echo(redact(traceback.format_exc()), err=True)
        raise fail(f"unexpected {type(exc).__name__}: {exc} (a bug in labelfix; rerun with "
                   "LABELFIX_DEBUG=1 for the traceback and report it)", 1) from None


def _quiet_broken_pipe() -> None:
    """The reader of our output went away (``labelfix ... | head``): stop without a word.

    Python would report the broken pipe again when it flushes stdout at exit; pointing
    stdout at /dev/null prevents that (the recipe in Python's signal documentation).
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (tests)
        pass
    finally:
        os.close(devnull)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class ProgressReporter:
    """Renders core events on stderr: progress bars on a terminal, messages everywhere."""

    def __init__(self, *, quiet: bool = False) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.quiet = quiet
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> ProgressReporter:
        if sys.stderr.isatty() and not self.quiet:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.console, transient=True,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, event: Event) -> None:
        if event.kind == "warning":
            self._message(f"Warning: {event.message}")
        elif event.kind == "info":
            if not self.quiet:
                self._message(event.message)
        elif self._progress is not None:
            if event.kind == "begin":
                self._tasks[event.task] = self._progress.add_task(event.task, total=event.total)
            elif event.kind == "advance" and event.task in self._tasks:
                self._progress.advance(self._tasks[event.task], event.amount)
            elif event.kind == "end" and event.task in self._tasks:
                self._progress.remove_task(self._tasks.pop(event.task))

    def _message(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            typer.echo(text, err=True)


def candidate_table(rows: list[dict[str, Any]], *, width: int, title: str | None = None) -> Any:
    """A rich table of candidates: rank, row, given -> suggested, quality, text cut to ``width``."""
    headers = ("Rank", "Row", "Given -> suggested", "Quality", "Text")
    cells = [
        [str(row["rank"]), str(row["row"]), f"{row['given_label']} -> {row['suggested_label']}",
         f"{row['label_quality']:.3f}", " ".join(str(row["text"]).split())]
        for row in rows
    ]
    return fixed_table(headers, cells, width=width, title=title,
                       right_aligned={"Rank", "Row", "Quality"})


def fixed_table(
    headers: tuple[str, ...], cells: list[list[str]], *, width: int, title: str | None = None,
    right_aligned: set[str] | frozenset[str] = frozenset(), wrap_last: bool = False,
) -> Any:
    """A table whose columns keep their full width except the last, which is cut to fit.

    Rich shrinks and collapses no-wrap columns on narrow terminals; sizing them here keeps row
    numbers and labels whole and cuts only the free text.
    """
    from rich.table import Table

    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    # Each column after the first costs 3 characters of separator (" │ ").
    room = max(6 if wrap_last else 10, width - sum(widths[:-1]) - 3 * (len(headers) - 1) - 1)
    # The last header stays whole even when that costs the table a little more width.
    widths[-1] = max(len(headers[-1]), min(widths[-1], room))
    table = Table(title=title, show_edge=False, pad_edge=False, expand=False)
    for index, (header, column_width) in enumerate(zip(headers, widths, strict=True)):
        wrap = wrap_last and index == len(headers) - 1
        table.add_column(header, no_wrap=not wrap, width=column_width,
                         overflow="fold" if wrap else "ellipsis",
                         justify="right" if header in right_aligned else "left")
    for row in cells:
        table.add_row(*row)
    return table


def stdout_console() -> Any:
    from rich.console import Console

    return Console(highlight=False)
