"""Errors and warnings of run folders, in a module that imports nothing heavy: the CLI catches
them without importing torch (`sharpest presets` and `--help` stay fast)."""

from __future__ import annotations

__all__ = ["CheckpointError", "RunFolderError", "RunFolderWarning"]


class RunFolderError(RuntimeError):
    """A run folder cannot be used as asked (exists without --resume, has no config, ...)."""


class CheckpointError(RunFolderError):
    """A checkpoint file is damaged (truncated, empty, garbled) or not a sharpest checkpoint."""


class RunFolderWarning(UserWarning):
    """Something in a run folder was repaired on resume (a damaged checkpoint skipped, ...)."""
