"""A tolerant reader of run folders, for the report (reads files only; no torch, no training code).

``metrics.jsonl`` may end in a torn line (a run killed mid-write) or, rarely, hold a damaged
line: such lines are skipped and counted (:attr:`RunData.skipped_lines`), never fatal. A folder
that does not exist, or holds neither ``config.yaml`` nor ``metrics.jsonl``, raises
:class:`ReportError` naming the path.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

__all__ = ["EXPECTED_FILES", "ReportError", "RunData", "flatten_config", "read_run"]

#: Files of a run (or preset) folder holding the expected outcome, first found wins.
EXPECTED_FILES = ("expected.md", "EXPECTED.md", "expected.txt")


class ReportError(ValueError):
    """A report cannot be made as asked (missing folder, not a run folder, no runs, …)."""


def _number(v: Any) -> float:
    """A float from a JSON value (None and non-numbers become NaN)."""
    if v is None or isinstance(v, bool):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"gamma": 1}}`` → ``{"optimizer.gamma": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten_config(v, key + "."))
        else:
            out[key] = v
    return out


@dataclass
class RunData:
    """One run folder as read by the report.

    ``records`` are the parsed lines of ``metrics.jsonl`` in file order; ``frame(event)`` gives
    one DataFrame per event (empty when absent). ``skipped_lines`` holds the 1-based numbers of
    lines that could not be parsed (a torn last line of a killed run, typically).
    """

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    config_text: str = ""
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped_lines: list[int] = field(default_factory=list)
    has_metrics: bool = True

    # -- events -----------------------------------------------------------------------------

    @cached_property
    def _frames(self) -> dict[str, pd.DataFrame]:
        by_event: dict[str, list[dict[str, Any]]] = {}
        for r in self.records:
            by_event.setdefault(str(r.get("event")), []).append(r)
        return {k: pd.DataFrame.from_records(v).reset_index(drop=True) for k, v in by_event.items()}

    def frame(self, event: str) -> pd.DataFrame:
        """The lines of ``event`` as a DataFrame (one column per field); empty when none."""
        df = self._frames.get(event)
        return df.copy() if df is not None else pd.DataFrame()

    @property
    def events(self) -> list[str]:
        return list(self._frames)

    def all_records(self) -> pd.DataFrame:
        """Every line as one DataFrame (for figure code that selects events itself)."""
        return pd.DataFrame.from_records(self.records) if self.records else pd.DataFrame()

    @property
    def name(self) -> str:
        return self.path.name or str(self.path)

    @property
    def finished(self) -> bool:
        return bool(self.records) and self.records[-1].get("event") == "end"

    @property
    def diverged(self) -> bool:
        return any(r.get("event") == "diverged" for r in self.records)

    @property
    def num_params(self) -> int | None:
        for r in self.records:
            if r.get("event") == "start" and r.get("num_params") is not None:
                return int(r["num_params"])
        return None

    # -- eigenvalues ------------------------------------------------------------------------

    @cached_property
    def eigen(self) -> pd.DataFrame:
        """The ``"eigen"`` lines that hold eigenvalues, sorted by iteration (stable)."""
        df = self.frame("eigen")
        if df.empty or "eigenvalues" not in df.columns:
            return pd.DataFrame()
        keep = df["eigenvalues"].map(lambda v: isinstance(v, list) and len(v) > 0)
        df = df[keep]
        if "iteration" in df.columns:
            df = df.sort_values("iteration", kind="stable")
        return df.reset_index(drop=True)

    def eigenvalue_matrix(self) -> np.ndarray:
        """``(points, k)`` float array of the eigenvalues (NaN where a point has fewer)."""
        eig = self.eigen
        if eig.empty:
            return np.zeros((0, 0))
        k = max(len(v) for v in eig["eigenvalues"])
        out = np.full((len(eig), k), np.nan)
        for i, vals in enumerate(eig["eigenvalues"]):
            out[i, : len(vals)] = [_number(v) for v in vals]
        return out

    # -- iterations and epochs --------------------------------------------------------------

    @cached_property
    def iters_per_epoch(self) -> float | None:
        """Optimizer steps per epoch, estimated from the records (None when not derivable).

        For each epoch value, the largest iteration logged with it; the median positive step of
        those maxima between consecutive epochs is the estimate.
        """
        last: dict[int, float] = {}
        for r in self.records:
            e, it = r.get("epoch"), r.get("iteration")
            if isinstance(e, (int, float)) and isinstance(it, (int, float)) and e == int(e):
                last[int(e)] = max(last.get(int(e), -math.inf), float(it))
        epochs = sorted(last)
        steps = [
            (last[b] - last[a]) / (b - a)
            for a, b in zip(epochs, epochs[1:])
            if last[b] > last[a] and b > a
        ]
        if not steps:
            return None
        ipe = float(np.median(steps))
        return ipe if ipe > 0 else None

    # -- expected outcome -------------------------------------------------------------------

    @property
    def expected(self) -> str | None:
        """The expected outcome: config key ``expected`` (or ``preset.expected``), else a file
        ``expected.md`` in the run folder."""
        for key in ("expected", "preset.expected"):
            v = flatten_config(self.config).get(key)
            if isinstance(v, str) and v.strip():
                return v
            if v is not None and not isinstance(v, str):
                return yaml.safe_dump(v, sort_keys=False, allow_unicode=True)
        return read_expected_file(self.path)


def read_expected_file(folder: Path) -> str | None:
    for name in EXPECTED_FILES:
        p = folder / name
        if p.is_file():
            text = p.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                return text
    return None


def _read_lines(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    records: list[dict[str, Any]] = []
    skipped: list[int] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            text = line.strip()
            if not text:
                continue
            try:
                rec = json.loads(text)
            except ValueError:
                skipped.append(n)
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                skipped.append(n)
    return records, skipped


def read_run(path: str | os.PathLike[str]) -> RunData:
    """Read a run folder (or its ``metrics.jsonl``); :class:`ReportError` if it is not one."""
    p = Path(path)
    if p.is_file() and p.name == "metrics.jsonl":
        p = p.parent
    if not p.exists():
        raise ReportError(f"run folder {str(p)!r} does not exist")
    if not p.is_dir():
        raise ReportError(f"{str(p)!r} is not a folder (expected a run folder)")
    config_path, metrics_path = p / "config.yaml", p / "metrics.jsonl"
    if not config_path.is_file() and not metrics_path.is_file():
        raise ReportError(
            f"{str(p)!r} is not a run folder: it holds neither config.yaml nor metrics.jsonl"
        )
    config: dict[str, Any] = {}
    config_text = ""
    if config_path.is_file():
        config_text = config_path.read_text(encoding="utf-8", errors="replace")
        try:
            loaded = yaml.safe_load(config_text)
        except yaml.YAMLError as err:
            raise ReportError(f"{str(config_path)!r} is not valid YAML: {err}") from None
        if isinstance(loaded, dict):
            config = loaded
        elif loaded is not None:
            raise ReportError(f"{str(config_path)!r} does not hold a mapping")
    records: list[dict[str, Any]] = []
    skipped: list[int] = []
    if metrics_path.is_file():
        records, skipped = _read_lines(metrics_path)
    return RunData(
        path=p,
        config=config,
        config_text=config_text,
        records=records,
        skipped_lines=skipped,
        has_metrics=metrics_path.is_file(),
    )
