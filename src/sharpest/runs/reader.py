"""Read a run folder back: ``sharpest.runs.load(DIR)`` gives one pandas DataFrame per event."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from sharpest.runs.folder import RunFolder
from sharpest.runs.io import read_records

__all__ = ["Run", "load"]


class Run:
    """A run folder's config and records.

    ``run["eigen"]`` (or ``run.eigen``) is the DataFrame of the ``"eigen"`` lines, one column per
    field (lists such as ``eigenvalues`` stay lists); an event with no line gives an empty
    DataFrame. ``run.records`` holds the raw dicts in file order.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.folder = RunFolder(path)
        self.path = self.folder.path
        if not self.folder.metrics_path.exists() and not self.folder.config_path.exists():
            raise FileNotFoundError(f"{self.path} is not a run folder (no metrics.jsonl)")
        self.config: dict[str, Any] = (
            self.folder.read_config() if self.folder.config_path.exists() else {}
        )
        self.records: list[dict[str, Any]] = (
            read_records(self.folder.metrics_path) if self.folder.metrics_path.exists() else []
        )

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={len(v)}" for k, v in self.frames.items())
        return f"Run({str(self.path)!r}, {counts})"

    @cached_property
    def frames(self) -> dict[str, pd.DataFrame]:
        """Every event's DataFrame, keyed by event name, in order of first appearance."""
        by_event: dict[str, list[dict[str, Any]]] = {}
        for r in self.records:
            by_event.setdefault(str(r.get("event")), []).append(r)
        return {
            k: pd.DataFrame.from_records(v).drop(columns="event").reset_index(drop=True)
            for k, v in by_event.items()
        }

    @property
    def events(self) -> list[str]:
        return list(self.frames)

    def __getitem__(self, event: str) -> pd.DataFrame:
        return self.frames.get(event, pd.DataFrame())

    def __getattr__(self, name: str) -> pd.DataFrame:
        if name.startswith("_") or name in ("frames",):
            raise AttributeError(name)
        return self[name]

    @property
    def finished(self) -> bool:
        return bool(self.records) and self.records[-1].get("event") == "end"

    @property
    def diverged(self) -> bool:
        return any(r.get("event") == "diverged" for r in self.records)

    @property
    def checkpoints(self) -> list[Path]:
        return self.folder.list_checkpoints()

    def eigenvalues(self) -> pd.DataFrame:
        """Eigenvalues in wide form: one row per tracking point, columns ``lambda_1 … lambda_k``,
        plus ``epoch`` and ``iteration``."""
        eig = self["eigen"]
        if eig.empty:
            return pd.DataFrame()
        values = pd.DataFrame(eig["eigenvalues"].tolist())
        values.columns = [f"lambda_{i + 1}" for i in range(values.shape[1])]
        return pd.concat([eig[["epoch", "iteration"]], values], axis=1)


def load(path: str | os.PathLike[str]) -> Run:
    """Read the run folder ``path`` (see :class:`Run`)."""
    return Run(path)
