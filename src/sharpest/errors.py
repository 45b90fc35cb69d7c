"""The package's root error and the errors and warnings of run folders, in a module that
imports nothing heavy: the CLI catches them without importing torch (`sharpest presets` and
`--help` stay fast).

Every error the package raises on purpose derives from :class:`SharpestError` (and, where
callers catch it, also from the builtin it used to be: ``ConfigError`` is a ``ValueError``,
``RunFolderError`` a ``RuntimeError``). The CLI turns a ``SharpestError`` into one paragraph
and exit status 2; any other exception is a bug and shows its traceback.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

__all__ = [
    "CheckpointError",
    "SharpestError",
    "RunFolderError",
    "RunFolderWarning",
    "install_warning_format",
    "warning_format_installed",
]


class SharpestError(Exception):
    """The root of every error sharpest raises on purpose: bad input (config, preset, data,
    run folder, checkpoint) or a state it refuses to continue from. Its message is one
    paragraph that names what is wrong and where.
    """


class RunFolderError(SharpestError, RuntimeError):
    """A run folder cannot be used as asked (exists without --resume, has no config, ...)."""


class CheckpointError(RunFolderError):
    """A checkpoint file is damaged (truncated, empty, garbled) or not a sharpest checkpoint."""


class RunFolderWarning(UserWarning):
    """Something in a run folder was repaired on resume (a damaged checkpoint skipped, ...)."""


def _show_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int,
    file: Any = None, line: str | None = None,
) -> None:
    text = " ".join(str(message).split())
    print(f"warning: {text}", file=file if file is not None else sys.stderr)


def install_warning_format() -> None:
    """Print warnings as one ``warning: …`` line (not Python's ``file:line: UserWarning``
    form), each time they happen. The CLI installs this (and the process pools it starts carry it
    into their workers); the library never does.
    """
    warnings.showwarning = _show_warning
    warnings.filterwarnings("always", category=UserWarning)


def warning_format_installed() -> bool:
    """Whether :func:`install_warning_format` is in force in this process."""
    return warnings.showwarning is _show_warning
