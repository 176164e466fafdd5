"""The exceptions of labelfix.

The core raises these and nothing else for problems a user can act on. The CLI prints
``str(error)`` as one line on stderr and exits with ``error.exit_code``: 2 for bad usage or bad
input, 1 when the work itself failed (a server down, data changed under us, a broken environment).
"""

from __future__ import annotations


class LabelfixError(Exception):
    """Base class; its message says what is wrong and how to fix it."""

    exit_code: int = 1


class UsageError(LabelfixError):
    """Bad input or options: the user can fix it by changing the command (exit 2)."""

    exit_code = 2


class DataError(UsageError):
    """The dataset (or a file describing it) cannot be used as given (exit 2)."""


class ProbabilitiesError(UsageError):
    """Predicted probabilities that do not fit the data (exit 2)."""


class StoreError(LabelfixError):
    """The database cannot be opened, written or upgraded (exit 2 unless the environment failed)."""

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NotFoundError(UsageError):
    """A dataset, audit or row named by the user does not exist (exit 2)."""


class WorkError(LabelfixError):
    """The work failed for a reason outside the user's input, e.g. a download (exit 1)."""
