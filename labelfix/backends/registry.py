"""Which review backends exist, and how each is configured from the environment."""

from __future__ import annotations

from labelfix.backends.base import ReviewBackend
from labelfix.backends.http import HttpSettings
from labelfix.errors import UsageError
from labelfix.events import Event, EventCallback, ignore

SERVER_BACKENDS = ("rubrix", "argilla", "label-studio")


def open_backend(
    name: str, *, insecure: bool = False, legacy_headers: str | None = None,
    on_event: EventCallback = ignore,
) -> ReviewBackend:
    """A configured backend by name.

    Raises:
        UsageError: an unknown backend, or a bad setting.
        BackendError: the server cannot be reached to detect its kind.
    """
    settings = HttpSettings.from_env(insecure=insecure)
    if insecure:
        on_event(Event("warning", message=(
            "--insecure: TLS certificates are not verified; anyone on the network path can read "
            "and change this traffic, API key included"
        )))
    if name == "rubrix":
        from labelfix.backends.rubrix import RubrixBackend

        return RubrixBackend.from_env(settings=settings, header_style=legacy_headers)
    if name == "argilla":
        from labelfix.backends.argilla import ArgillaBackend

        return ArgillaBackend.from_env(settings=settings)
    if name == "label-studio":
        from labelfix.backends.label_studio import LabelStudioBackend

        return LabelStudioBackend.from_env(settings=settings)
    raise UsageError(f"--backend {name!r}: choose one of {', '.join(SERVER_BACKENDS)}, "
                     "sheet or local")
