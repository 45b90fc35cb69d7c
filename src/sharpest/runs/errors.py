"""Errors of run folders (no torch import: the CLI's error handling loads this cheaply)."""

from __future__ import annotations

__all__ = ["CheckpointError", "RunFolderError", "RunFolderWarning"]


class RunFolderError(RuntimeError):
    """A run folder cannot be used as asked (exists without --resume, has no config, ...)."""


class CheckpointError(RunFolderError):
    """A checkpoint file is damaged (truncated, empty, garbled) or not a sharpest checkpoint."""


class RunFolderWarning(UserWarning):
    """Something in a run folder was repaired on resume (a damaged checkpoint skipped, ...)."""
