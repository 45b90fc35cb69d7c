"""The report reads run folders through :mod:`sharpest.runs` (one reader for the package).

``RunData`` is :class:`sharpest.runs.Run`; :func:`read_run` only turns a folder that cannot be
read into a :class:`ReportError` naming the path.
"""

from __future__ import annotations

import os

from sharpest.errors import SharpestError
from sharpest.runs.io import RecordsError
from sharpest.runs.reader import (
    EXPECTED_FILES,
    Run,
    RunReadError,
    flatten_config,
    read_expected_file,
)

__all__ = [
    "EXPECTED_FILES",
    "ReportError",
    "RunData",
    "flatten_config",
    "read_expected_file",
    "read_run",
]

#: One run folder as the report reads it.
RunData = Run


class ReportError(SharpestError, ValueError):
    """A report cannot be made as asked (missing folder, not a run folder, no runs, …)."""


def read_run(path: str | os.PathLike[str]) -> Run:
    """Read a run folder (or its ``metrics.jsonl``); :class:`ReportError` if it is not one or
    its ``metrics.jsonl`` is damaged before its last line.
    """
    try:
        return Run(path)
    except (RunReadError, RecordsError) as err:
        raise ReportError(str(err)) from None
