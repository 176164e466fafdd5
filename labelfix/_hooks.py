"""Crash points for the reliability tests.

``LABELFIX_CRASH_AT=name`` (or ``name#N`` for its N-th pass) makes the process kill itself
with SIGKILL when it reaches that point: exactly what a power cut or ``kill -9`` does there,
at a place the test controls. Unset, a checkpoint costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_passes: dict[str, int] = {}


def checkpoint(name: str) -> None:
    target = os.environ.get("LABELFIX_CRASH_AT")
    if not target:
        return
    point, _, nth = target.partition("#")
    if point != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
