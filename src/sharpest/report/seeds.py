"""Seeds in a comparative report: runs that differ only in ``seed`` are one configuration.

:func:`seed_groups` groups the runs (one configuration by
:func:`sharpest.runs.names.configuration_key`, the keys of
:data:`~sharpest.report.figures.IGNORED_KEYS` left out too), keeping the order in which each
configuration first appears. :func:`mean_std_rows` gives the table rows as
``mean ± std`` (sample std, ddof 1) with the number of seeds; :func:`plot_seed_bands` draws
each configuration's λ₁ as the mean over its seeds with a ±1 std band (:func:`seed_band`: within
the seeds' range; λ₂ dashed, mean only),
each seed's series interpolated linearly onto the first seed's tracking points within the
range every seed covers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from sharpest.report.axes import common_x, legend_outside, log_y, x_values
from sharpest.report.figures import IGNORED_KEYS, NoData
from sharpest.report.reader import RunData
from sharpest.runs.names import configuration_key

__all__ = ["mean_std", "mean_std_rows", "plot_seed_bands", "seed_band", "seed_groups"]


def seed_groups(runs: Sequence[RunData]) -> list[list[RunData]]:
    """The runs grouped by configuration, seeds of one configuration together.

    Two runs of one configuration with the same seed are the same experiment trained twice
    (a preset's shared baseline under two names, as fig3_lstm's ``eta_mid`` and ``S_mid`` were),
    not two seeds: the second starts a group of its own, so no spread is computed from a
    repeat.
    """
    groups: list[tuple[str, list[RunData]]] = []
    for r in runs:
        key = configuration_key(r.config, IGNORED_KEYS)
        seed = r.config.get("seed")
        home = next((g for k, g in groups
                     if k == key and all(m.config.get("seed") != seed for m in g)), None)
        if home is None:
            groups.append((key, [r]))
        else:
            home.append(r)
    return [g for _, g in groups]


def mean_std(values: Sequence[Any]) -> tuple[float, float, int] | None:
    """(mean, sample std, n) of the finite numbers among ``values`` (None if there are none)."""
    xs = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
          and math.isfinite(v)]
    if not xs:
        return None
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0, len(xs)


def mean_std_rows(
    labels: Sequence[str],
    summaries: Sequence[Sequence[dict[str, Any]]],
    columns: Sequence[tuple[str, str, Callable[[Any], str]]],
) -> list[list[str]]:
    """One row per configuration: its label with the seed count, then ``mean ± std`` per
    column (a single seed: the value alone; no value: "—").
    """
    rows = []
    for lab, group in zip(labels, summaries):
        n = len(group)
        row = [f"{lab} ({n} seeds)" if n > 1 else lab]
        for key, _, fmt in columns:
            stats = mean_std([s.get(key) for s in group])
            if stats is None:
                row.append("—")
            elif stats[2] == 1:
                row.append(fmt(stats[0]))
            else:
                row.append(f"{fmt(stats[0])} ± {fmt(stats[1])}")
        rows.append(row)
    return rows


def _on_grid(runs: Sequence[RunData], x: str, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Each seed's λ_rank on the first seed's x within the common range: (x, rows)."""
    series = []
    for r in runs:
        lam = r.eigenvalue_matrix()
        if r.eigen.empty or lam.shape[1] <= rank:
            continue
        xs = np.asarray(x_values(r, r.eigen, x), dtype=float)
        ys = lam[:, rank].astype(float)
        ok = np.isfinite(xs) & np.isfinite(ys)
        if ok.sum():
            order = np.argsort(xs[ok])
            series.append((xs[ok][order], ys[ok][order]))
    if not series:
        return np.empty(0), np.empty((0, 0))
    lo = max(s[0][0] for s in series)
    hi = min(s[0][-1] for s in series)
    grid = series[0][0][(series[0][0] >= lo) & (series[0][0] <= hi)]
    return grid, np.array([np.interp(grid, sx, sy) for sx, sy in series])


def seed_band(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The band drawn around the mean of ``rows`` (seeds × points): mean ± 1 sample std,
    within the seeds' own range (and above 1 % of the mean, for the log axis).

    With 3 seeds one outlier makes std ≥ mean; mean − std then fell to the 1 % floor and the
    band showed deep spikes no seed ever went near on the log axis. Clipped, it never claims
    more spread than the seeds show.
    """
    mean = rows.mean(axis=0)
    sd = rows.std(axis=0, ddof=1)
    low = np.maximum(mean - sd, np.maximum(rows.min(axis=0), mean * 1e-2))
    high = np.minimum(mean + sd, rows.max(axis=0))
    return low, high


def plot_seed_bands(
    groups: Sequence[Sequence[RunData]],
    labels: Sequence[str],
    colours: Sequence[Any],
    *,
    notes: list[str] | None = None,
) -> Figure:
    """λ₁ of each configuration: the mean over its seeds (solid) with a ±1 std band, and the
    mean λ₂ (dashed), on one log axis.
    """
    runs = [r for g in groups for r in g]
    if not any(not r.eigen.empty for r in runs):
        raise NoData('no run has "eigen" lines')
    x = common_x(runs)
    fig = Figure(figsize=(8.0, 4.2))
    ax = fig.subplots()
    for group, lab, c in zip(groups, labels, colours):
        for rank, style in ((0, "-"), (1, "--")):
            grid, rows = _on_grid(group, x, rank)
            if not len(grid):
                continue
            mean = rows.mean(axis=0)
            pos = mean > 0
            n = rows.shape[0]
            ax.plot(grid[pos], mean[pos], style, color=c, lw=1.2,
                    label=(f"{lab} (mean of {n})" if n > 1 else lab) if rank == 0 else None)
            if rank == 0 and n > 1:
                low, high = seed_band(rows)
                ax.fill_between(grid[pos], low[pos], high[pos], color=c, alpha=0.2, lw=0)
    log_y(ax)
    ax.set_xlabel("epoch" if x == "epoch" else "iteration")
    ax.set_ylabel("λ₁ (solid, ±1 std band), λ₂ (dashed)")
    ax.set_title("Two largest eigenvalues, mean over seeds", fontsize=10)
    legend_outside(ax)  # outside the data: bands fill most of the axes
    if notes is not None:
        counts = sorted({len(g) for g in groups})
        notes.append(f"Seeds per configuration: {', '.join(map(str, counts))}; the band is ±1 "
                     "sample standard deviation across seeds, within the seeds' range.")
    fig.tight_layout()
    return fig
