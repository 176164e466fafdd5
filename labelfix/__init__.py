"""labelfix: find label errors, review them, publish the corrected dataset with its history."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("labelfix")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
