"""Figures of the probe records (paper Fig. 4, 9–11): cross-sections, the α effect, k_min.

Every function takes the records as a pandas DataFrame — either a whole run log
(``pandas.read_json(OUT / "metrics.jsonl", lines=True)``; the ``"probe"`` lines are selected)
or the probe lines alone — and returns a matplotlib ``Figure`` (built without pyplot, so no
global state or display is involved). :func:`save_figure` writes PNG and SVG;
:func:`write_probe_figures` writes every figure the records allow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from sharpest.report.axes import legend_outside
from sharpest.report.figures import save_figure

__all__ = [
    "ALPHA_COLORS",
    "alpha_summary",
    "kmin_summary",
    "plot_alpha_effect",
    "plot_cross_sections",
    "plot_kmin",
    "probe_records",
    "save_figure",
    "write_probe_figures",
]

# The paper's Fig. 4 (right): α = 0.5, 1, 2 in red, green, blue.
ALPHA_COLORS = {0.5: "tab:red", 1.0: "tab:green", 2.0: "tab:blue"}


def probe_records(df: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The probe lines of ``kind`` (``"step"``, ``"cross_section"``, ``"alpha"``), by iteration."""
    if "event" in df.columns:
        df = df[df["event"] == "probe"]
    if "kind" not in df.columns:
        return df.iloc[0:0]
    out = df[df["kind"] == kind]
    if "iteration" in out.columns:
        out = out.sort_values("iteration", kind="stable")
    return out.reset_index(drop=True)


def _floats(values: Any) -> np.ndarray:
    if values is None or (isinstance(values, float) and math.isnan(values)):
        return np.array([], dtype=np.float64)
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def _eigen_rows(df: pd.DataFrame, eigen_index: int) -> pd.DataFrame:
    if "eigen_index" not in df.columns:
        return df.iloc[0:0]
    return df[df["eigen_index"] == eigen_index]


def plot_cross_sections(
    df: pd.DataFrame,
    eigen_index: int = 0,
    *,
    per_epoch: bool = True,
    kmax: float = 8.0,
    cmap: str = "coolwarm",
    title: str | None = None,
) -> Figure:
    """3-D cross-sections L(θ(t) + k·Δθ̄ᵢ(t)·eᵢ(t)) against k and time, coloured by ‖H‖₂.

    The paper's Fig. 4 (left): x is k, y the epoch or the iteration, z the loss; each curve's
    colour is the spectral norm at that time (blue → red as it grows).

    Args:
        df: the run's records.
        eigen_index: the eigenvector, 0-based (0: the top one).
        per_epoch: y is the epoch (the first probe of each epoch) rather than the iteration.
        kmax: the largest |k| drawn.
        cmap: the colour map.
        title: the figure's title.
    """
    rows = _eigen_rows(probe_records(df, "cross_section"), eigen_index)
    if per_epoch and "epoch" in rows.columns and len(rows):
        rows = rows.groupby("epoch", sort=True).head(1)
    ycol = "epoch" if per_epoch and "epoch" in rows.columns else "iteration"
    fig = Figure(figsize=(7, 5.5))
    ax = fig.add_subplot(projection="3d")
    norms = rows["spectral_norm"].astype(float).to_numpy() if len(rows) else np.array([])
    finite = norms[np.isfinite(norms)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-12)
    colours = colormaps[cmap]
    curves = []
    for _, row in rows.iterrows():
        ks, losses = _floats(row["ks"]), _floats(row["losses"])
        keep = np.abs(ks) <= kmax
        order = np.argsort(ks[keep])
        y = float(row[ycol]) if ycol in row else 0.0
        curves.append((ks[keep][order], y, losses[keep][order], float(row["spectral_norm"])))
    top = loss_clip([c[2] for c in curves])
    for ks, y, losses, sn in curves:
        shown = losses if top is None else np.minimum(losses, top)
        ax.plot(ks, np.full(ks.size, y), shown, color=colours(norm(sn)), lw=1.2)
    ax.set_xlabel("k")
    ax.set_xticks([k for k in (-8, -4, -2, 0, 2, 4, 8) if abs(k) <= kmax])
    ax.set_ylabel(ycol)
    ax.set_zlabel("loss" if top is None else f"loss (clipped at {top:.3g})", labelpad=8)
    ax.set_box_aspect(None, zoom=0.88)  # room for the z label
    sm = ScalarMappable(norm=norm, cmap=colours)
    sm.set_array(norms)
    fig.colorbar(sm, ax=ax, shrink=0.6, pad=0.14, label="spectral norm ‖H‖₂")
    ax.set_title(title or f"Loss along e{eigen_index + 1}, in units of the typical SGD step")
    return fig


def loss_clip(curves: Sequence[np.ndarray], factor: float = 4.0) -> float | None:
    """Where to clip the loss axis so that one exploding curve does not flatten the others:
    ``factor`` × the median of the curves' maxima when some curve goes beyond it (None: no
    clip needed). Beyond the edge of stability a cross-section at large k reaches hundreds
    while the typical one stays near the training loss.
    """
    maxima = np.array([np.nanmax(c) for c in curves if np.isfinite(c).any()])
    if maxima.size < 2:
        return None
    bound = factor * float(np.median(maxima))
    return bound if bound > 0 and maxima.max() > bound else None


def symlog_if_dwarfed(ax: Any, series: Sequence[Sequence[float]], ratio: float = 5.0) -> bool:
    """A symmetric log y axis when one series' largest |value| exceeds ``ratio`` × another's
    (beyond the edge of stability α = 2 changes the loss by hundreds of % while α ≤ 1 moves
    it by a few): linear within the smaller series' range, logarithmic beyond. Returns whether
    it switched.
    """
    tops = [float(np.nanmax(np.abs(v))) for v in series if len(v) and np.isfinite(v).any()]
    tops = [t for t in tops if t > 0]
    if len(tops) < 2 or max(tops) <= ratio * min(tops):
        return False
    ax.set_yscale("symlog", linthresh=min(tops))
    return True


def _direction_label(direction: str, eigen_index: Any) -> str:
    if direction == "eigen":
        return f"along e{int(eigen_index) + 1}"
    return {"random": "along a random direction", "full": "full SGD step"}.get(
        direction, str(direction)
    )


def plot_alpha_effect(
    df: pd.DataFrame,
    alphas: Sequence[float] = (0.5, 1.0, 2.0),
    *,
    directions: Sequence[tuple[str, int | None]] | None = None,
    relative: bool = True,
    x: str = "iteration",
) -> Figure:
    """E[L(θ − αη g̃)] − L(θ) over time for a few α (the paper's Fig. 4 right), one panel per
    direction: by default the top eigenvector, then the random-direction and full-step
    baselines when recorded, so the sharpest direction's effect can be compared.

    ``relative``: in % of L(θ) (else absolute). α = 0.5, 1, 2 are red, green, blue as in the
    paper.
    """
    rows = probe_records(df, "alpha")
    if directions is None:
        directions = [("eigen", 0), ("random", None), ("full", None)]
        present = set(rows["direction"]) if "direction" in rows.columns else set()
        directions = [d for d in directions if d[0] in present] or [("eigen", 0)]
    fig = Figure(figsize=(4.2 * len(directions), 3.6))
    axes = fig.subplots(1, len(directions), squeeze=False)[0]
    others = colormaps["viridis"]
    for ax, (direction, index) in zip(axes, directions):
        panel: list[list[float]] = []
        sel = rows[rows["direction"] == direction] if len(rows) else rows
        if direction == "eigen" and len(sel):
            sel = sel[sel["eigen_index"] == index]
        for j, a in enumerate(alphas):
            xs, ys = [], []
            for _, row in sel.iterrows():
                al = _floats(row["alphas"])
                hit = np.flatnonzero(np.isclose(al, a))
                if hit.size == 0:
                    continue
                vals = _floats(row["change_rel" if relative else "change_mean"])
                xs.append(float(row[x]) if x in row else float(len(xs)))
                ys.append(vals[hit[0]] * (100.0 if relative else 1.0))
            colour = ALPHA_COLORS.get(float(a), others(j / max(1, len(alphas) - 1)))
            ax.plot(xs, ys, "o", ms=3, color=colour, label=f"α = {a:g}")
            panel.append(ys)
        symlog_if_dwarfed(ax, panel)
        ax.axhline(0.0, color="0.5", lw=0.8)
        ax.set_title(_direction_label(direction, index))
        ax.set_xlabel(x)
        ax.set_ylabel("change in loss (%)" if relative else "change in loss")
    legend_outside(axes[-1])  # α's colours are the same in every panel
    fig.tight_layout()
    return fig


def plot_kmin(df: pd.DataFrame, eigen_index: int = 0, *, x: str = "iteration") -> Figure:
    """k_min (every ``kmin_*`` field recorded) over time along one eigenvector; records that
    never crossed within the grid are left out.
    """
    rows = _eigen_rows(probe_records(df, "cross_section"), eigen_index)
    fields = sorted(
        (c for c in rows.columns if c.startswith("kmin_")),
        key=lambda c: float(c[5:-3].replace("p", ".")) if c.endswith("pct") else math.inf,
    )
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.add_subplot()
    reached = [f for f in fields if pd.to_numeric(rows[f], errors="coerce").notna().any()]
    for name in reached:  # a threshold never crossed gets no legend entry (nothing drawn)
        vals = pd.to_numeric(rows[name], errors="coerce")
        ax.plot(
            rows[x],
            vals,
            "o-",
            ms=3,
            lw=0.8,
            label=name.replace("kmin_", "k_min ").replace("pct", " %"),
        )
    ax.set_yscale("log", base=2)
    ax.set_xlabel(x)
    ax.set_ylabel("k_min")
    ax.set_title(f"Smallest k changing the loss, along e{eigen_index + 1}")
    legend_outside(ax)
    if len(reached) < len(fields):  # under the legend, outside the data
        ax.text(1.02, 0.0, "never reached:\n" + ", ".join(
            f.replace("kmin_", "").replace("pct", " %") for f in fields if f not in reached),
            transform=ax.transAxes, ha="left", va="bottom", fontsize=7, color="0.4")
    fig.tight_layout()
    return fig


def kmin_summary(df: pd.DataFrame, last: int | None = None) -> pd.DataFrame:
    """k_min averaged over the last ``last`` cross-sections of each eigenvector (all if None).

    The paper's numbers (e.g. SimpleCNN 3.36 / 5.52 for 1 % / 10 %) average over the last 100
    iterations. One row per (``eigen_index``, ``threshold`` field) with ``mean`` and ``median``
    over the records that crossed within the grid, ``n`` records and ``n_crossed``.
    """
    rows = probe_records(df, "cross_section")
    fields = [c for c in rows.columns if c.startswith("kmin_")]
    out = []
    if len(rows) and "eigen_index" in rows.columns:
        for i in sorted(int(v) for v in rows["eigen_index"].dropna().unique()):
            sel = _eigen_rows(rows, i)
            if last:
                sel = sel.tail(last)
            for name in fields:
                vals = pd.to_numeric(sel[name], errors="coerce")
                crossed = vals.dropna()
                out.append(
                    {
                        "eigen_index": i,
                        "threshold": name,
                        "mean": float(crossed.mean()) if len(crossed) else math.nan,
                        "median": float(crossed.median()) if len(crossed) else math.nan,
                        "n": int(len(vals)),
                        "n_crossed": int(len(crossed)),
                    }
                )
    return pd.DataFrame(
        out, columns=["eigen_index", "threshold", "mean", "median", "n", "n_crossed"]
    )


def alpha_summary(df: pd.DataFrame, last: int | None = None) -> pd.DataFrame:
    """The α-probe's mean relative change (fraction of L(θ)) per direction and α, averaged over
    the last ``last`` probe points (all if None): the paper's "α = 2 and 4 lead to a 2.1 % and
    11.1 % increase". One row per (``direction``, ``eigen_index``, ``alpha``).
    """
    rows = probe_records(df, "alpha")
    out = []
    if len(rows):
        keys = (
            rows[["direction", "eigen_index"]]
            .astype(object)
            .where(rows[["direction", "eigen_index"]].notna(), None)
        )
        for key in dict.fromkeys(map(tuple, keys.to_numpy().tolist())):
            direction, index = key
            sel = rows[rows["direction"] == direction]
            if index is not None:
                sel = sel[sel["eigen_index"] == index]
            if last:
                sel = sel.tail(last)
            table: dict[float, list[float]] = {}
            for _, row in sel.iterrows():
                for a, v in zip(_floats(row["alphas"]), _floats(row["change_rel"])):
                    table.setdefault(float(a), []).append(v)
            for a, vals in sorted(table.items()):
                arr = np.asarray(vals, dtype=np.float64)
                out.append(
                    {
                        "direction": direction,
                        "eigen_index": None if index is None else int(index),
                        "alpha": a,
                        "change_rel_mean": float(np.nanmean(arr)) if arr.size else math.nan,
                        "n": int(arr.size),
                    }
                )
    return pd.DataFrame(out, columns=["direction", "eigen_index", "alpha", "change_rel_mean", "n"])


def write_probe_figures(df: pd.DataFrame, out_dir: str | Path, prefix: str = "probe") -> list[Path]:
    """Every probe figure the records allow, as PNG + SVG in ``out_dir``; the paths written.

    Cross-sections and k_min for each recorded eigenvector (``{prefix}_cross_section_e1``, …),
    and the α effect (``{prefix}_alpha``).
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    cs = probe_records(df, "cross_section")
    if len(cs) and "eigen_index" in cs.columns:
        for i in sorted(int(v) for v in cs["eigen_index"].dropna().unique()):
            written += save_figure(
                plot_cross_sections(df, i), out_dir / f"{prefix}_cross_section_e{i + 1}"
            )
            written += save_figure(plot_kmin(df, i), out_dir / f"{prefix}_kmin_e{i + 1}")
    if len(probe_records(df, "alpha")):
        written += save_figure(plot_alpha_effect(df), out_dir / f"{prefix}_alpha")
    return written
