"""Axis helpers every figure module of the report shares (matplotlib axes, no pyplot):
x coordinates of a run's lines (:func:`x_values`, :func:`common_x`), a log y axis with plain
tick labels (:func:`log_y`), an epoch axis on top (:func:`epoch_axis`), the legend outside the
data (:func:`legend_outside`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import LogFormatter

from sharpest.report.reader import RunData

__all__ = ["common_x", "epoch_axis", "legend_outside", "log_y", "numeric", "x_values"]


def numeric(df: pd.DataFrame, col: str) -> np.ndarray:
    """Column ``col`` of ``df`` as floats (NaN where absent or not a number)."""
    if df.empty or col not in df.columns:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)


def x_values(run: RunData, df: pd.DataFrame, x: str = "iteration") -> np.ndarray:
    """The x coordinates of the lines ``df`` of ``run``: iterations, or epochs (iteration divided
    by the steps per epoch when those are known, else the lines' ``epoch`` field).

    A restart (``init_from`` a checkpoint of another run) is placed after its source: its
    iterations count from the checkpoint's (``Run.start_iteration``).
    """
    it = numeric(df, "iteration") + run.start_iteration
    if x == "iteration":
        return it if np.isfinite(it).any() else np.arange(len(df), dtype=float)
    ipe = run.iters_per_epoch
    if ipe and np.isfinite(it).any():
        return it / ipe
    ep = numeric(df, "epoch")
    return ep if np.isfinite(ep).any() else np.arange(len(df), dtype=float)


def common_x(runs: Sequence[RunData]) -> str:
    """``"epoch"`` when every run knows its steps per epoch (one x axis for all), else
    ``"iteration"``.
    """
    return "epoch" if all(r.iters_per_epoch for r in runs) else "iteration"


def epoch_axis(ax: Any, run: RunData) -> None:
    """A secondary x axis on top in epochs, for an axis in iterations (when the run's steps
    per epoch are known).
    """
    ipe = run.iters_per_epoch
    if ipe:
        sec = ax.secondary_xaxis("top", functions=(lambda v: v / ipe, lambda e: e * ipe))
        sec.set_xlabel("epoch", fontsize=8)
        sec.tick_params(labelsize=7)


def log_y(ax: Any) -> None:
    """Log y axis with plain-number tick labels (cheaper to draw than mathtext powers)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(LogFormatter())
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


def legend_outside(ax: Any, **kwargs: Any) -> Any:
    """The legend to the right of the axes, outside the data (``bbox_inches="tight"`` and
    ``tight_layout`` make room for it), so that no curve hides under it.
    """
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    opts = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0,
            "fontsize": 8, "frameon": False, **kwargs}
    return ax.legend(handles, labels, **opts)
