"""Figures of the loss landscape: 2-D surfaces with the trajectory, and worst-case sharpness.

Read from the run folder only: the surfaces from ``OUT/surfaces/*.npz`` (written by the
``probes.surface`` callback and by ``sharpest surface``; arrays ``a``, ``b``, ``loss``,
``accuracy``, ``done`` and a JSON ``meta`` with the directions' names, the eigenvalues along
them and the trajectory's coordinates), the sharpness from the ``"probe"`` lines
``kind="sharpness"`` and λ₁ from the ``"eigen"`` lines. Figures are built without pyplot.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sharpest.report.figures import NoData, x_values
from sharpest.report.reader import RunData

__all__ = [
    "SurfaceData",
    "plot_sharpness",
    "plot_surface_3d",
    "plot_surface_contours",
    "read_surfaces",
    "surface_figure_specs",
]


@dataclass
class SurfaceData:
    """One surface file: the grid, the values and what the axes are."""

    path: Path
    a: np.ndarray
    b: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray | None
    done: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    @property
    def label(self) -> str:
        epoch, it = self.meta.get("epoch"), self.meta.get("iteration")
        where = f"epoch {epoch}" if epoch is not None else f"iteration {it}"
        if epoch is not None and it is not None:
            where += f" (iteration {it})"
        return where

    def axis_name(self, i: int) -> str:
        names = self.meta.get("names") or ["d₁", "d₂"]
        values = self.meta.get("eigenvalues") or [None, None]
        name = str(names[i])
        lam = values[i] if i < len(values) else None
        return f"{name}  (λ = {lam:.3g})" if isinstance(lam, (int, float)) else name


def read_surfaces(run_path: str | Path) -> list[SurfaceData]:
    """Every surface file of a run folder, by (epoch, iteration, name)."""
    folder = Path(run_path) / "surfaces"
    out = []
    for path in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError) as err:
            raise NoData(f"{path} cannot be read: {err}") from None
        text = str(arrays.get("meta", ""))
        meta = json.loads(text) if text else {}
        acc = arrays.get("accuracy")
        if acc is not None and not np.isfinite(acc).any():
            acc = None
        out.append(SurfaceData(path, arrays["a"], arrays["b"], arrays["loss"], acc,
                               arrays["done"], meta))

    def key(s: SurfaceData) -> tuple:
        e, i = s.meta.get("epoch"), s.meta.get("iteration")
        return (e if e is not None else math.inf, i if i is not None else -1, s.path.name)

    return sorted(out, key=key)


def _levels(loss: np.ndarray, n: int = 24) -> np.ndarray:
    finite = loss[np.isfinite(loss)]
    if finite.size == 0:
        raise NoData("the surface holds no finite loss")
    lo, hi = float(finite.min()), float(np.percentile(finite, 95))
    if hi <= lo:
        hi = lo + max(abs(lo), 1.0) * 1e-3
    return np.linspace(lo, hi, n)


def _draw_contour(ax: Any, s: SurfaceData, values: np.ndarray, cmap: str, label: str,
                  trajectory: bool = True, levels: np.ndarray | None = None) -> Any:
    A, B = np.meshgrid(s.a, s.b, indexing="ij")
    z = np.where(np.isfinite(values), values, np.nan)
    lv = _levels(z) if levels is None else levels
    filled = ax.contourf(A, B, np.clip(z, lv[0], lv[-1]), levels=lv, cmap=cmap, extend="max")
    ax.contour(A, B, z, levels=lv[::3], colors="k", linewidths=0.4, alpha=0.6)
    ax.plot([0], [0], marker="*", color="white", markeredgecolor="k", markersize=11, zorder=5)
    traj = s.meta.get("trajectory")
    if trajectory and traj and traj.get("coords"):
        xy = np.asarray(traj["coords"], dtype=float)
        ax.plot(xy[:, 0], xy[:, 1], "-o", color="tab:red", markersize=3, linewidth=1.2,
                zorder=4, label="trajectory")
        ax.annotate(r"$\theta_0$", xy[0], textcoords="offset points", xytext=(4, 4), fontsize=7,
                    color="tab:red")
        ax.set_xlim(min(s.a[0], xy[:, 0].min()), max(s.a[-1], xy[:, 0].max()))
        ax.set_ylim(min(s.b[0], xy[:, 1].min()), max(s.b[-1], xy[:, 1].max()))
    ax.set_xlabel(s.axis_name(0), fontsize=8)
    ax.set_ylabel(s.axis_name(1), fontsize=8)
    ax.tick_params(labelsize=7)
    fig = ax.get_figure()
    bar = fig.colorbar(filled, ax=ax, shrink=0.85)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return filled


def plot_surface_contours(surfaces: Sequence[SurfaceData], *, accuracy: bool = True,
                          notes: list[str] | None = None, title: str | None = None) -> Figure:
    """One row per surface: the loss contours with the trajectory (red; θ₀ labelled; ★ the
    surface's centre), and the accuracy contours beside it when the file has them (with
    ``accuracy=False``: the loss contours of all surfaces side by side).
    """
    if not surfaces:
        raise NoData("no surfaces (OUT/surfaces/*.npz)")
    cols = 2 if accuracy and any(s.accuracy is not None for s in surfaces) else 1
    # Loss only: the surfaces side by side (one row), else one row per surface.
    shape = (len(surfaces), cols) if cols == 2 else (1, len(surfaces))
    fig = Figure(figsize=(5.2 * shape[1], 4.2 * shape[0]))
    for r, s in enumerate(surfaces):
        ax = fig.add_subplot(*shape, r * cols + 1)
        _draw_contour(ax, s, s.loss, "viridis", "loss")
        ax.set_title(f"loss at {s.label}: {s.meta.get('directions', '')} plane", fontsize=9)
        if cols == 2 and s.accuracy is not None:
            ax2 = fig.add_subplot(*shape, r * cols + 2)
            acc = 100.0 * s.accuracy
            finite = acc[np.isfinite(acc)]
            levels = np.linspace(finite.min(), max(finite.max(), finite.min() + 1e-6), 24)
            _draw_contour(ax2, s, acc, "magma", "accuracy (%)", levels=levels)
            ax2.set_title(f"accuracy at {s.label}", fontsize=9)
        if notes is not None:
            if not s.complete:
                notes.append(f"{s.path.name}: {int((~s.done).sum())} grid point(s) not "
                             "evaluated yet (a killed surface; run it again to finish)")
            traj = s.meta.get("trajectory") or {}
            res = traj.get("residual")
            if res:
                notes.append(f"{s.path.name}: the trajectory's points lie up to "
                             f"{max(res):.3g} from the plane (projected by least squares)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_surface_3d(s: SurfaceData, notes: list[str] | None = None) -> Figure:
    """The loss surface in 3-D (values above the 95th percentile clipped to it)."""
    fig = Figure(figsize=(6.4, 5.0))
    ax = fig.add_subplot(1, 1, 1, projection="3d")
    A, B = np.meshgrid(s.a, s.b, indexing="ij")
    lv = _levels(s.loss)
    z = np.clip(np.where(np.isfinite(s.loss), s.loss, lv[-1]), lv[0], lv[-1])
    ax.plot_surface(A, B, z, cmap="viridis", linewidth=0, antialiased=True, alpha=0.95)
    ax.set_xlabel(s.axis_name(0), fontsize=7)
    ax.set_ylabel(s.axis_name(1), fontsize=7)
    ax.set_zlabel("loss", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.set_title(f"loss surface at {s.label}: {s.meta.get('directions', '')} plane", fontsize=9)
    return fig


def _sharpness_rows(run: RunData) -> pd.DataFrame:
    if "probe" not in run.events:
        return pd.DataFrame()
    df = run.frame("probe")
    if "kind" not in df.columns:
        return df.iloc[0:0]
    return df[df["kind"] == "sharpness"].reset_index(drop=True)


def plot_sharpness(run: RunData, notes: list[str] | None = None) -> Figure:
    """Worst-case sharpness of each kind and ρ along training (top), λ₁ and ½ρ²λ₁ (bottom)."""
    rows = _sharpness_rows(run)
    if rows.empty:
        raise NoData('no "probe" lines with kind "sharpness"')
    fig = Figure(figsize=(7.0, 5.6))
    top = fig.add_subplot(2, 1, 1)
    for (kind, rho), group in rows.groupby(["sharpness_kind", "rho"], sort=True):
        x = x_values(run, group)
        top.plot(x, pd.to_numeric(group["sharpness"], errors="coerce"), "-o", markersize=3,
                 label=f"{kind}, ρ = {rho:g}")
    top.set_ylabel("max L(θ+δ) − L(θ)", fontsize=8)
    top.set_title("worst-case sharpness", fontsize=9)
    top.legend(fontsize=7)
    top.tick_params(labelsize=7)
    bottom = fig.add_subplot(2, 1, 2, sharex=top)
    eig = run.eigen_points if "eigen" in run.events else pd.DataFrame()
    if not eig.empty and "eigenvalues" in eig.columns:
        lam1 = run.eigenvalue_matrix()[:, 0]
        bottom.plot(x_values(run, eig), lam1, "-", color="tab:red", label="λ₁")
    elif "eigenvalue" in rows.columns:
        bottom.plot(x_values(run, rows), pd.to_numeric(rows["eigenvalue"], errors="coerce"),
                    "o", color="tab:red", label="λ₁")
    else:
        if notes is not None:
            notes.append("no λ₁ in this run (tracking off)")
    bottom.set_ylabel("λ₁", fontsize=8)
    bottom.set_xlabel("iteration", fontsize=8)
    bottom.tick_params(labelsize=7)
    if "quadratic" in rows.columns and rows["quadratic"].notna().any():
        eps2 = rows[(rows["sharpness_kind"] == "eps")]
        if not eps2.empty:
            for rho, group in eps2.groupby("rho"):
                top.plot(x_values(run, group), pd.to_numeric(group["quadratic"], errors="coerce"),
                         ":", color="grey", label=f"½ρ²λ₁, ρ = {rho:g}")
            top.legend(fontsize=7)
    bottom.legend(fontsize=7)
    fig.tight_layout()
    return fig


def surface_figure_specs(run: RunData) -> list[tuple[str, str, str, Any]]:
    """``(stem, title, caption, build(notes))`` of the landscape figures ``run`` has data for."""
    specs: list[tuple[str, str, str, Any]] = []
    surfaces = read_surfaces(run.path)
    by_kind: dict[str, list[SurfaceData]] = {}
    for s in surfaces:
        by_kind.setdefault(str(s.meta.get("directions", "plane")), []).append(s)
    for kind, group in by_kind.items():
        specs.append((
            f"surface_{kind}", f"Loss surfaces ({kind} plane)",
            "Loss (left) and accuracy (right) on the grid around each point (★), the run's "
            "checkpoints projected on the plane (red, from θ₀); axes name the directions "
            "and, for eigenvectors, the eigenvalue along them.",
            lambda notes, g=group: plot_surface_contours(g, notes=notes),
        ))
        last = group[-1]
        specs.append((
            f"surface_{kind}_3d", f"Loss surface in 3-D ({kind} plane, {last.label})",
            "The last surface of this plane as a 3-D plot (values above the 95th percentile "
            "clipped).",
            lambda notes, s=last: plot_surface_3d(s, notes=notes),
        ))
    if not _sharpness_rows(run).empty:
        specs.append((
            "sharpness", "Worst-case sharpness along training",
            "max over ‖δ‖ ≤ ρ (adaptive: ‖δ/|θ|‖ ≤ ρ; m: mean over batches of m of each "
            "batch's own) of L(θ+δ) − L(θ) by projected gradient ascent, with λ₁ below "
            "(dotted: ½ρ²λ₁, the value at a minimum for small ρ).",
            lambda notes: plot_sharpness(run, notes=notes),
        ))
    return specs
