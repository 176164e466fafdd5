"""How the core reports progress and warnings without printing.

Use cases take an ``on_event`` callback; the CLI turns events into progress bars and messages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

EventKind = Literal["begin", "advance", "end", "warning", "info"]


@dataclass(frozen=True)
class Event:
    """One thing that happened.

    ``begin`` opens a task (``total`` units, or None when unknown), ``advance`` adds ``amount``
    units to it, ``end`` closes it; ``warning`` and ``info`` carry a ``message`` for the user.
    """

    kind: EventKind
    task: str = ""
    total: int | None = None
    amount: int = 0
    message: str = ""


EventCallback = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The default callback: drop every event."""


class Task:
    """Context manager that wraps ``begin``/``advance``/``end`` for one task."""

    def __init__(self, on_event: EventCallback, name: str, total: int | None) -> None:
        self._on_event = on_event
        self._name = name
        self._total = total

    def __enter__(self) -> Task:
        self._on_event(Event("begin", self._name, total=self._total))
        return self

    def advance(self, amount: int = 1) -> None:
        self._on_event(Event("advance", self._name, amount=amount))

    def __exit__(self, *exc: object) -> None:
        self._on_event(Event("end", self._name))
