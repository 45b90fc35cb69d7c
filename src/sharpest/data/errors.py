"""The one exception type the data layer raises for bad files, folders and options."""

from __future__ import annotations

from sharpest.errors import SharpestError

__all__ = ["DataError"]


class DataError(SharpestError, ValueError):
    """A data file or folder is missing, corrupt, truncated or of the wrong kind.

    Subclasses :class:`ValueError` so that callers treating bad input generically still catch it;
    the message always names the offending file or folder, so the CLI can print it as is.
    """
