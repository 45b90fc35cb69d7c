"""Figures of the curvature beyond the top-k, from run folders only.

- :func:`plot_stability` — λ₁ against the stability line 2(1+μ)/η (and Nudged SGD's
  2(1+μ)/(γη)), with the ±10 % band and the fraction of points inside it.
- :func:`plot_layer_shares` — which parameter tensors e₁ lives in along training: the shares of
  ‖e₁‖² per tensor (``layer_shares`` of the ``"eigen"`` lines), stacked.
- :func:`plot_density_evolution` — the eigenvalue density (``"density"`` lines) at each point,
  coloured by iteration, log density against a symmetric-log eigenvalue axis (bulk and outliers).
- :func:`plot_trace` — tr(H) ± 2 standard errors (``"trace"`` lines) and Σ of the tracked top-k.

:func:`sharpest.report.stability.draw_stability_lines` adds the lines to an existing λ axis
(the eigenvalue figure).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from sharpest.report.axes import epoch_axis, log_y, x_values
from sharpest.report.figures import NoData
from sharpest.report.reader import RunData
from sharpest.report.stability import (
    NEAR_LINE,
    draw_stability_lines,
    fraction_near_line,
    stability_frame,
)

__all__ = [
    "curvature_figure_specs",
    "plot_density_evolution",
    "plot_layer_shares",
    "plot_stability",
    "plot_trace",
]


def plot_stability(run: RunData, *, notes: list[str] | None = None) -> Figure:
    """λ₁ with its stability line and the ±10 % band around it."""
    frame = stability_frame(run)
    if frame.empty:
        raise NoData('no "eigen" lines with eigenvalues and a learning rate')
    if not np.isfinite(frame["line_lambda1"]).any():
        raise NoData("the optimizer's threshold bounds λ₁(P⁻¹H), not λ₁(H): see the "
                     "preconditioned sharpness figure")
    fig = Figure(figsize=(7.0, 3.8))
    ax = fig.subplots()
    it = frame["iteration"].to_numpy()
    line = frame["line_lambda1"].to_numpy()
    ax.fill_between(it, (1 - NEAR_LINE) * line, (1 + NEAR_LINE) * line, color="0.85",
                    label="±10 % of the line")
    lam = frame["lambda1"].to_numpy()
    pos = np.isfinite(lam) & (lam > 0)
    ax.plot(it[pos], lam[pos], "-o", ms=2.5, color="tab:red", lw=1.0, label="λ₁")
    draw_stability_lines(ax, run)
    if (~pos).any() and notes is not None:
        notes.append(f"{int((~pos).sum())} non-positive λ₁ value(s) are not drawn.")
    log_y(ax)
    frac = fraction_near_line(lam, line)
    ax.set_title(f"λ₁ and the stability line — {run.name}: within 10 % at "
                 f"{100 * frac:.0f} % of {len(frame)} points", fontsize=10)
    ax.set_xlabel("iteration")
    ax.set_ylabel("λ₁")
    ax.legend(fontsize=8)
    epoch_axis(ax, run)
    return fig


def _shares_frame(run: RunData, rank: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    eig = run.eigen
    if eig.empty or "layer_shares" not in eig.columns:
        raise NoData('no "eigen" lines with layer_shares')
    rows, keep = [], []
    for i, shares in enumerate(eig["layer_shares"]):
        if isinstance(shares, dict) and shares:
            rows.append({k: (v[rank] if isinstance(v, list) and len(v) > rank else np.nan)
                         for k, v in shares.items()})
            keep.append(i)
    if not rows:
        raise NoData('no "eigen" line holds layer_shares')
    return x_values(run, eig, "iteration")[keep], pd.DataFrame(rows).fillna(0.0)


def plot_layer_shares(run: RunData, *, rank: int = 1, top: int = 8,
                      notes: list[str] | None = None) -> Figure:
    """Shares of ‖e_rank‖² per parameter tensor along training, stacked (the ``top`` tensors
    with the largest peak share; the rest summed as "other").
    """
    it, shares = _shares_frame(run, rank - 1)
    order = shares.max().sort_values(ascending=False).index
    shown = list(order[:top])
    if len(order) > top:
        shares = shares[shown].assign(other=shares[list(order[top:])].sum(axis=1))
        shown.append("other")
        if notes is not None:
            notes.append(f"{len(order) - top} smaller tensors are summed as 'other'.")
    fig = Figure(figsize=(7.5, 4.0))
    ax = fig.subplots()
    cmap = colormaps["tab20"]
    ax.stackplot(it, shares[shown].to_numpy().T, labels=shown,
                 colors=[cmap(i % 20) for i in range(len(shown))])
    ax.set_ylim(0, 1)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"share of ‖e{rank}‖²")
    ax.set_title(f"Where e{rank} lives: per-tensor shares — {run.name}", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    epoch_axis(ax, run)
    return fig


def plot_density_evolution(run: RunData, *, notes: list[str] | None = None) -> Figure:
    """The eigenvalue density at each ``"density"`` point, coloured by iteration (log ρ)."""
    df = run.frame("density")
    if df.empty or not {"grid", "density"} <= set(df.columns):
        raise NoData('no "density" lines')
    it = x_values(run, df, "iteration")
    fig = Figure(figsize=(7.5, 4.0))
    ax = fig.subplots()
    norm = Normalize(vmin=float(np.nanmin(it)), vmax=float(max(np.nanmax(it), np.nanmin(it) + 1)))
    cmap = colormaps["viridis"]
    width = 0.0
    for x, grid, dens in zip(it, df["grid"], df["density"]):
        g, d = np.asarray(grid, float), np.asarray(dens, float)
        floor = 1e-8 * np.nanmax(d) if np.isfinite(d).any() else 0.0
        ax.plot(g, np.maximum(d, floor), color=cmap(norm(x)), lw=1.0)
        width = max(width, float(np.nanmax(np.abs(g))))
    log_y(ax)
    if "sigma" in df.columns:
        sigma = float(pd.to_numeric(df["sigma"], errors="coerce").median())
        if np.isfinite(sigma) and sigma > 0 and width > 20 * sigma:
            ax.set_xscale("symlog", linthresh=10 * sigma)
    ax.set_xlabel("eigenvalue λ")
    ax.set_ylabel("density ρ(λ)")
    ax.set_title(f"Eigenvalue density along training — {run.name}", fontsize=10)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="iteration")
    return fig


def plot_trace(run: RunData, *, notes: list[str] | None = None) -> Figure:
    """tr(H) ± 2 standard errors along training, and Σ of the tracked top-k eigenvalues."""
    df = run.frame("trace")
    if df.empty or "value" not in df.columns:
        raise NoData('no "trace" lines')
    it = x_values(run, df, "iteration")
    value = pd.to_numeric(df["value"], errors="coerce").to_numpy(float)
    err = pd.to_numeric(df.get("stderr", pd.Series(np.nan, index=df.index)),
                        errors="coerce").to_numpy(float)
    fig = Figure(figsize=(7.0, 3.8))
    ax = fig.subplots()
    ax.errorbar(it, value, yerr=2 * np.where(np.isfinite(err), err, 0.0), fmt="-o", ms=3,
                color="tab:blue", lw=1.0, capsize=2, label="tr(H) ± 2 s.e.")
    eig = run.eigen
    if not eig.empty:
        lam = run.eigenvalue_matrix()
        ax.plot(x_values(run, eig, "iteration"), np.nansum(lam, axis=1), "--", color="tab:red",
                lw=1.0, label=f"Σ top-{lam.shape[1]} λᵢ")
    ax.set_xlabel("iteration")
    ax.set_ylabel("trace")
    ax.set_title(f"Trace of the curvature — {run.name}", fontsize=10)
    ax.legend(fontsize=8)
    epoch_axis(ax, run)
    return fig


def curvature_figure_specs(run: RunData) -> list[tuple[str, str, str, Any]]:
    """``(stem, title, caption, build(notes))`` of the figures above that ``run`` has records
    for (the HTML report adds them to a run's page).
    """
    specs: list[tuple[str, str, str, Any]] = []
    if not run.eigen.empty:
        specs.append((
            "stability", "λ₁ against the stability line",
            "λ₁ (red) with 2(1+μ)/η (dashed; Nudged SGD: 2(1+μ)/(γη), dotted) at the learning "
            "rate of each point; grey: within 10 % of the line (|λ₁ − line| ≤ 0.1·line).",
            lambda notes: plot_stability(run, notes=notes),
        ))
        if "layer_shares" in run.eigen.columns:
            specs.append((
                "layer_shares", "Where the sharpest direction lives",
                "Share of ‖e₁‖² in each parameter tensor at each tracking point (stacked).",
                lambda notes: plot_layer_shares(run, notes=notes),
            ))
    if "density" in run.events:
        specs.append((
            "density", "Eigenvalue density along training",
            "Stochastic Lanczos quadrature with Gaussian broadening, one curve per point "
            "(dark: early, yellow: late); log density, symmetric-log eigenvalue axis.",
            lambda notes: plot_density_evolution(run, notes=notes),
        ))
    if "trace" in run.events:
        specs.append((
            "trace", "Trace of the curvature",
            "Hutch++ estimate of tr(H) with ±2 standard errors, and the sum of the tracked "
            "top-k eigenvalues (dashed).",
            lambda notes: plot_trace(run, notes=notes),
        ))
    return specs
