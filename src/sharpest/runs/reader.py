"""Read a run folder back: ``sharpest.runs.load(DIR)`` gives one pandas DataFrame per event.

This is the one reader of run folders; the report reads through it. It is tolerant of a run
killed mid-write: a torn LAST line of ``metrics.jsonl`` is skipped (its number kept in
:attr:`Run.skipped_lines`), while a damaged line in the middle raises
:class:`~sharpest.runs.io.RecordsError` naming the file and line. A folder that does not exist,
or holds neither ``config.yaml`` nor ``metrics.jsonl``, raises :class:`RunReadError`.
"""

from __future__ import annotations

import math
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml

from sharpest.errors import SharpestError
from sharpest.record_values import descending, number
from sharpest.runs.folder import CHECKPOINT_PATTERN, RunFolder
from sharpest.runs.io import parse_records

__all__ = ["EXPECTED_FILES", "Run", "RunReadError", "flatten_config", "load"]

#: Files of a run (or preset) folder holding the expected outcome, first found wins.
EXPECTED_FILES = ("expected.md", "EXPECTED.md", "expected.txt")


class RunReadError(SharpestError, FileNotFoundError, ValueError):
    """A path is not a readable run folder (missing, not a folder, no run files, bad YAML).

    A ``FileNotFoundError`` (what :func:`load` always raised for a missing folder) and a
    ``ValueError`` (what the report's ``ReportError`` is).
    """


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"gamma": 1}}`` → ``{"optimizer.gamma": 1}`` (lists stay values).

    Example:
        >>> flatten_config({"optimizer": {"name": "sgd", "lr": 0.1}, "epochs": 3})
        {'optimizer.name': 'sgd', 'optimizer.lr': 0.1, 'epochs': 3}
    """
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten_config(v, key + "."))
        else:
            out[key] = v
    return out


def read_expected_file(folder: Path) -> str | None:
    """The text of the first non-empty :data:`EXPECTED_FILES` file in ``folder``, else None."""
    for name in EXPECTED_FILES:
        p = folder / name
        if p.is_file():
            text = p.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                return text
    return None


class Run:
    """A run folder's config and records.

    ``run["eigen"]`` (or ``run.eigen``, or ``run.frame("eigen")``) is the DataFrame of the
    ``"eigen"`` lines, one column per field (lists such as ``eigenvalues`` stay lists); an event
    with no line gives an empty DataFrame. ``run.records`` holds the raw dicts in file order;
    ``run.skipped_lines`` the 1-based numbers of lines skipped (at most the torn last one).
    ``path`` may also name the folder's ``metrics.jsonl``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        if p.is_file() and p.name == "metrics.jsonl":
            p = p.parent
        if not p.exists():
            raise RunReadError(f"run folder {str(p)!r} does not exist")
        if not p.is_dir():
            raise RunReadError(f"{str(p)!r} is not a folder (expected a run folder)")
        self.folder = RunFolder(p)
        self.path = self.folder.path
        config_path, metrics_path = self.folder.config_path, self.folder.metrics_path
        if not config_path.is_file() and not metrics_path.is_file():
            raise RunReadError(
                f"{str(p)!r} is not a run folder: it holds neither config.yaml nor metrics.jsonl"
            )
        self.config: dict[str, Any] = {}
        self.config_text = ""
        if config_path.is_file():
            self.config_text = config_path.read_text(encoding="utf-8", errors="replace")
            try:
                loaded = yaml.safe_load(self.config_text)
            except yaml.YAMLError as err:
                raise RunReadError(f"{str(config_path)!r} is not valid YAML: {err}") from None
            if isinstance(loaded, dict):
                self.config = loaded
            elif loaded is not None:
                raise RunReadError(f"{str(config_path)!r} does not hold a mapping")
        self.has_metrics = metrics_path.is_file()
        self.records: list[dict[str, Any]] = []
        self.skipped_lines: list[int] = []
        if self.has_metrics:
            self.records, self.skipped_lines = parse_records(metrics_path)

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={len(v)}" for k, v in self.frames.items())
        return f"Run({str(self.path)!r}, {counts})"

    # -- events -------------------------------------------------------------------------------

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

    def frame(self, event: str) -> pd.DataFrame:
        """A copy of ``run[event]`` (safe to modify); empty when the event has no line."""
        return self[event].copy()

    def __getattr__(self, name: str) -> pd.DataFrame:
        if name.startswith("_") or name in ("frames",):
            raise AttributeError(name)
        return self[name]

    def all_records(self) -> pd.DataFrame:
        """Every line as one DataFrame, ``event`` column included."""
        return pd.DataFrame.from_records(self.records) if self.records else pd.DataFrame()

    # -- state --------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.path.name or str(self.path)

    @property
    def finished(self) -> bool:
        """Whether the last record is an ``"end"`` line (the run completed or stopped cleanly)."""
        return bool(self.records) and self.records[-1].get("event") == "end"

    @property
    def diverged(self) -> bool:
        """Whether any ``"diverged"`` line was logged."""
        return any(r.get("event") == "diverged" for r in self.records)

    @property
    def num_params(self) -> int | None:
        for r in self.records:
            if r.get("event") == "start" and r.get("num_params") is not None:
                return int(r["num_params"])
        return None

    @property
    def checkpoints(self) -> list[Path]:
        return self.folder.list_checkpoints()

    @property
    def expected(self) -> str | None:
        """The expected outcome: config key ``expected`` (or ``preset.expected``), else a file
        ``expected.md`` in the run folder.
        """
        for key in ("expected", "preset.expected"):
            v = flatten_config(self.config).get(key)
            if isinstance(v, str) and v.strip():
                return v
            if v is not None and not isinstance(v, str):
                return yaml.safe_dump(v, sort_keys=False, allow_unicode=True)
        return read_expected_file(self.path)

    # -- eigenvalues --------------------------------------------------------------------------

    @cached_property
    def eigen_points(self) -> pd.DataFrame:
        """The ``"eigen"`` lines that hold eigenvalues, sorted by iteration (stable)."""
        df = self.frame("eigen")
        if df.empty or "eigenvalues" not in df.columns:
            return pd.DataFrame()
        keep = df["eigenvalues"].map(lambda v: isinstance(v, list) and len(v) > 0)
        df = df[keep]
        if "iteration" in df.columns:
            df = df.sort_values("iteration", kind="stable")
        return df.reset_index(drop=True)

    def eigenvalue_matrix(self, order: Literal["descending", "recorded"] = "descending"
                          ) -> np.ndarray:
        """``(points, k)`` float array of the eigenvalues (NaN where a point has fewer).

        Args:
            order: ``"descending"``: each row as λ₁ ≥ λ₂ ≥ … (NaN last), the paper's λᵢ where
                positive (:func:`sharpest.record_values.descending`); ``"recorded"``: as the
                line holds them, the solver's order (by |λ| under ``track.which: LM``), which is
                the order of the saved eigenvectors and of ``eigenvalues_stderr``.
        """
        _check_order(order)
        eig = self.eigen_points
        if eig.empty:
            return np.zeros((0, 0))
        k = max(len(v) for v in eig["eigenvalues"])
        out = np.full((len(eig), k), np.nan)
        for i, vals in enumerate(eig["eigenvalues"]):
            out[i, : len(vals)] = descending(vals) if order == "descending" else [
                number(v) for v in vals]
        return out

    def eigenvalues(self, order: Literal["recorded", "descending"] = "recorded") -> pd.DataFrame:
        """Eigenvalues in wide form: one row per tracking point, columns ``lambda_1 … lambda_k``,
        plus ``epoch`` and ``iteration``.

        Args:
            order: ``"recorded"``: as the lines hold them (the order of the saved eigenvectors;
                by |λ| under ``track.which: LM``); ``"descending"``: λ₁ ≥ λ₂ ≥ … per row, as
                :meth:`eigenvalue_matrix` gives them.
        """
        _check_order(order)
        eig = self["eigen"]
        if eig.empty:
            return pd.DataFrame()
        rows = eig["eigenvalues"].tolist()
        if order == "descending":
            rows = [descending(v) if isinstance(v, list) else v for v in rows]
        values = pd.DataFrame(rows)
        values.columns = [f"lambda_{i + 1}" for i in range(values.shape[1])]
        return pd.concat([eig[["epoch", "iteration"]], values], axis=1)

    # -- iterations and epochs ----------------------------------------------------------------

    @cached_property
    def start_iteration(self) -> int:
        """The iteration of its source run that this run starts from: ``N`` of the
        ``ckpt-N.pt`` named by its ``init_from`` (a restart, such as Fig. 5's variants from the
        base run's last checkpoint), else 0.

        The run's own records count from 0 again; figures add this offset so that a restart
        continues its source's curve on a shared axis (a checkpoint file of another name gives
        0: its iteration is unknown).
        """
        start = next((r for r in self.records if r.get("event") == "start"), None)
        source = start.get("init_from") if start else None
        if isinstance(source, str):
            match = CHECKPOINT_PATTERN.match(Path(source).name)
            if match:
                return int(match.group(1))
        return 0

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


def _check_order(order: str) -> None:
    if order not in ("descending", "recorded"):
        raise ValueError(f"order: 'descending' or 'recorded', not {order!r}")


def load(path: str | os.PathLike[str]) -> Run:
    """Read the run folder ``path`` (see :class:`Run`)."""
    return Run(path)
