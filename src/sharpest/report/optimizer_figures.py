"""Figures of the optimizer-aware fields of the ``"eigen"`` lines, from run folders only.

- :func:`plot_preconditioned` — λ₁(P⁻¹H) (``preconditioned``) against the optimizer's
  threshold (``stability_threshold``: 38/η for Adam at β₁ = 0.9, 2/η for RMSprop), with the
  ±10 % band, and λ₁(H) for comparison (Cohen et al., 2022).
- :func:`plot_batch_sharpness` — batch sharpness ± 2 standard errors, the sharpness along the
  last update and λ₁ against SGD's 2(1+μ)/η (2/η without momentum; Andreyev & Beneventano,
  2024).
- :func:`plot_overlaps` — the share of the gradient, of the minibatch gradients and of the
  update in the top-k subspace (Gur-Ari, Roberts & Dyer, 2018).

Each is built only when the lines hold its fields (:func:`optimizer_figure_specs`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sharpest.report.axes import epoch_axis, log_y
from sharpest.report.figures import NoData
from sharpest.report.reader import RunData
from sharpest.report.stability import (
    NEAR_LINE,
    fraction_near_line,
    is_adaptive,
    line_label,
    stability_frame,
)

__all__ = [
    "optimizer_figure_specs",
    "plot_batch_sharpness",
    "plot_overlaps",
    "plot_preconditioned",
]


def _column(eig: pd.DataFrame, name: str) -> np.ndarray:
    if name not in eig.columns:
        return np.full(len(eig), np.nan)
    return pd.to_numeric(eig[name], errors="coerce").to_numpy(dtype=float)


def plot_preconditioned(run: RunData, *, notes: list[str] | None = None) -> Figure:
    """λ₁(P⁻¹H) with the optimizer's threshold and the ±10 % band; λ₁(H) thin."""
    frame = stability_frame(run)
    if frame.empty or not np.isfinite(frame["preconditioned1"]).any():
        raise NoData('no "eigen" lines with preconditioned')
    it = frame["iteration"].to_numpy()
    pre = frame["preconditioned1"].to_numpy()
    line = frame["line"].to_numpy()
    fig = Figure(figsize=(7.0, 3.8))
    ax = fig.subplots()
    ax.fill_between(it, (1 - NEAR_LINE) * line, (1 + NEAR_LINE) * line, color="0.85",
                    label="±10 % of the line")  # fmt: skip
    ax.plot(it, line, "--", color="0.25", lw=0.9, label=line_label(run))
    ok = np.isfinite(pre) & (pre > 0)
    ax.plot(it[ok], pre[ok], "-o", ms=2.5, color="tab:purple", lw=1.0, label="λ₁(P⁻¹H)")
    lam = frame["lambda1"].to_numpy()
    pos = np.isfinite(lam) & (lam > 0)
    ax.plot(it[pos], lam[pos], "-", color="tab:red", lw=0.8, alpha=0.6, label="λ₁(H)")
    if notes is not None and (np.isfinite(pre) & ~ok).any():
        notes.append(f"{int((np.isfinite(pre) & ~ok).sum())} non-positive λ₁(P⁻¹H) not drawn.")
    log_y(ax)
    frac = fraction_near_line(pre, line)
    ax.set_title(f"Preconditioned sharpness and the threshold — {run.name}: within 10 % at "
                 f"{100 * frac:.0f} % of {int(np.isfinite(pre).sum())} points", fontsize=10)
    ax.set_xlabel("iteration")
    ax.set_ylabel("eigenvalue")
    ax.legend(fontsize=8)
    epoch_axis(ax, run)
    return fig


def plot_batch_sharpness(run: RunData, *, notes: list[str] | None = None) -> Figure:
    """Batch sharpness ± 2 s.e., update sharpness and λ₁, with 2(1+μ)/η for SGD."""
    eig = run.eigen_points
    if eig.empty or "batch_sharpness" not in eig.columns:
        raise NoData('no "eigen" lines with batch_sharpness')
    it = _column(eig, "iteration")
    bs, se = _column(eig, "batch_sharpness"), _column(eig, "batch_sharpness_stderr")
    fig = Figure(figsize=(7.0, 3.8))
    ax = fig.subplots()
    ok = np.isfinite(bs)
    ax.errorbar(it[ok], bs[ok], yerr=2 * np.where(np.isfinite(se[ok]), se[ok], 0.0), fmt="-o",
                ms=2.5, lw=1.0, capsize=2, color="tab:green",
                label="batch sharpness ± 2 s.e.")  # fmt: skip
    upd = _column(eig, "update_sharpness")
    if np.isfinite(upd).any():
        m = np.isfinite(upd)
        ax.plot(it[m], upd[m], "-", lw=0.9, color="tab:orange", label="update sharpness")
    lam = run.eigenvalue_matrix()[:, 0]
    ax.plot(it, lam, "-", lw=0.9, color="tab:red", label="λ₁(H)")
    frame = stability_frame(run)
    if not is_adaptive(run) and not frame.empty:
        ax.plot(frame["iteration"], frame["line"], "--", color="0.25", lw=0.9,
                label=line_label(run))  # fmt: skip
    elif notes is not None:
        notes.append("The optimizer's threshold bounds λ(P⁻¹H); no line is drawn here.")
    ax.set_xlabel("iteration")
    ax.set_ylabel("sharpness")
    ax.set_title(f"Batch sharpness, update sharpness and λ₁ — {run.name}", fontsize=10)
    ax.legend(fontsize=8)
    epoch_axis(ax, run)
    return fig


_OVERLAPS = (
    ("gradient_overlap", "full gradient (subset)", "tab:blue"),
    ("gradient_overlap_batch", "minibatch gradients (mean)", "tab:green"),
    ("update_overlap", "last update", "tab:orange"),
)


def plot_overlaps(run: RunData, *, notes: list[str] | None = None) -> Figure:
    """‖P_k v‖²/‖v‖² along training for the gradient, the minibatch gradients, the update."""
    eig = run.eigen_points
    present = [o for o in _OVERLAPS if o[0] in eig.columns]
    if eig.empty or not present:
        raise NoData('no "eigen" lines with gradient_overlap')
    it = _column(eig, "iteration")
    fig = Figure(figsize=(7.0, 3.8))
    ax = fig.subplots()
    for field, label, color in present:
        y = _column(eig, field)
        m = np.isfinite(y)
        ax.plot(it[m], y[m], "-o", ms=2.5, lw=1.0, color=color, label=label)
    ax.set_ylim(0, 1.02)
    k = run.eigenvalue_matrix().shape[1]
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"share in the top-{k} subspace")
    ax.set_title(f"The gradient's share of the top-{k} subspace — {run.name}", fontsize=10)
    ax.legend(fontsize=8)
    epoch_axis(ax, run)
    return fig


def optimizer_figure_specs(run: RunData) -> list[tuple[str, str, str, Any]]:
    """``(stem, title, caption, build(notes))`` of the figures above that ``run`` has fields
    for (the HTML report adds them to a run's page).
    """
    eig = run.eigen_points
    if eig.empty:
        return []
    specs: list[tuple[str, str, str, Any]] = []
    if "preconditioned" in eig.columns:
        specs.append((
            "preconditioned", "Preconditioned sharpness against the optimizer's threshold",
            "λ₁ of P⁻¹H (purple; P the optimizer's preconditioner at each point) with the "
            "optimizer's stability threshold (dashed; Adam: (2+2β₁)/((1−β₁)η), 38/η at β₁ = "
            "0.9; RMSprop: 2/η) and λ₁(H) (thin red). Cohen et al. 2022.",
            lambda notes: plot_preconditioned(run, notes=notes),
        ))
    if "batch_sharpness" in eig.columns:
        specs.append((
            "batch_sharpness", "Batch sharpness against 2/η",
            "E_B[g_Bᵀ H_B g_B/‖g_B‖²] over minibatches of the training batch size (± 2 s.e.), "
            "the sharpness uᵀHu/‖u‖² along the last update and λ₁(H), with SGD's threshold "
            "2(1+μ)/η (dashed). Andreyev & Beneventano 2024.",
            lambda notes: plot_batch_sharpness(run, notes=notes),
        ))
    if any(o[0] in eig.columns for o in _OVERLAPS):
        specs.append((
            "overlaps", "The gradient's share of the top subspace",
            "‖P_k v‖²/‖v‖² for the full gradient of the Hessian subset, the mean over minibatch "
            "gradients and the last update, P_k the projector on the tracked top-k "
            "eigenvectors. Gur-Ari et al. 2018.",
            lambda notes: plot_overlaps(run, notes=notes),
        ))
    return specs
