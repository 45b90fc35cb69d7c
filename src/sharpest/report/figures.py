"""The report's figures, from run folders only (matplotlib ``Figure`` objects, no pyplot).

Single run:

- :func:`plot_eigenvalues` — the paper's Fig. 1/2: the tracked top eigenvalues λᵢ against the
  iteration on a log scale, coloured by rank (red → blue), above the train/val/test accuracy
  (or perplexity, or the training loss); ``until`` zooms on the beginning (Fig. 2, bottom).
  Points whose Lanczos run did not converge are hollow markers off the lines; with
  ``eigenvalues_stderr`` in the lines, a band of ±1 standard error surrounds each λᵢ.
- :func:`plot_training` — training loss, evaluation loss and accuracy, and the learning rate
  when it changes.
- :func:`plot_angles` — the largest (and every) principal angle between consecutive top-k
  eigenbases, when the ``"eigen"`` lines hold ``angle_max`` / ``angles`` (radians unless a line
  says ``"angle_unit": "deg"``).

Several runs (labelled by the config keys that differ between them, see :func:`run_labels`):

- :func:`plot_sweep` — Fig. 3 / Fig. 5: λ₁ (solid) and λ₂ (dashed) of every run on one log
  axis, and the training loss.
- :func:`plot_accuracy_norms` — Fig. 6: train and validation accuracy, and the spectral norm
  (solid) and Frobenius norm √(Σ λᵢ², top 5; dashed) on a log scale, against the epoch.

Every ``plot_*`` raises :class:`NoData` (with the reason) when the records lack what it needs,
and appends remarks (e.g. eigenvalues hidden by the log scale) to ``notes`` when given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure

from sharpest.errors import SharpestError
from sharpest.report.axes import (
    common_x,
    epoch_axis,
    legend_outside,
    log_y,
    numeric,
    x_values,
)
from sharpest.report.reader import RunData, flatten_config
from sharpest.report.stability import draw_stability_lines
from sharpest.report.summary import eval_frame, frobenius
from sharpest.runs.eigen_quality import converged_mask, stderr_matrix

__all__ = [
    "IGNORED_KEYS",
    "NoData",
    "plot_accuracy_norms",
    "plot_angles",
    "plot_eigenvalues",
    "plot_sweep",
    "plot_training",
    "rank_colours",
    "run_colours",
    "run_labels",
    "save_figure",
    "x_values",
]

SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}
#: Config keys never used to tell runs apart (paths, devices, bookkeeping).
IGNORED_KEYS = ("data_root", "device", "out", "output", "expected", "preset.expected", "name")


class NoData(SharpestError):
    """A figure cannot be drawn: the run folders lack the records it needs (the message says)."""


# -- helpers ----------------------------------------------------------------------------------


def rank_colours(k: int) -> list[Any]:
    """k colours from red (rank 1) to blue/violet (rank k), as in the paper's Fig. 1."""
    cmap = colormaps["rainbow_r"]
    return [cmap(i / (k - 1)) if k > 1 else cmap(0.0) for i in range(k)]


def _x_label(x: str) -> str:
    return "epoch" if x == "epoch" else "iteration"


def _eval_metric(runs: Sequence[RunData], splits: Sequence[str] = ("train", "val", "test")):
    """``"accuracy"`` if any run evaluated accuracy, else ``"perplexity"``, else None."""
    for col in ("accuracy", "perplexity"):
        for run in runs:
            for split in splits:
                ev = eval_frame(run, split)
                if not ev.empty and col in ev.columns and ev[col].notna().any():
                    return col
    return None


def _metric_values(ev: pd.DataFrame, metric: str) -> np.ndarray:
    y = numeric(ev, metric)
    return y * 100.0 if metric == "accuracy" else y


def _metric_label(metric: str) -> str:
    return "accuracy (%)" if metric == "accuracy" else metric


def _log_if_positive(ax: Any, values: Sequence[float]) -> None:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size and (v > 0).all() and v.max() / v.min() > 20:
        log_y(ax)


def _marker(n: int) -> dict[str, Any]:
    return {"marker": "o", "ms": 2.5} if n <= 60 else {}


def save_figure(
    fig: Figure, stem: str | Path, formats: Sequence[str] = ("png", "svg"), dpi: int = 120
) -> list[Path]:
    """Write ``fig`` as ``stem.png`` and ``stem.svg`` (folders created); the paths written."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        fig.savefig(path, format=fmt, dpi=dpi, bbox_inches="tight")
        paths.append(path)
    return paths


# -- single run -------------------------------------------------------------------------------


def plot_eigenvalues(
    run: RunData,
    *,
    until: float | None = None,
    title: str | None = None,
    notes: list[str] | None = None,
) -> Figure:
    """λᵢ against the iteration (log scale, coloured by rank) above the accuracy curves.

    Args:
        run: the run.
        until: only iterations ≤ ``until`` (a zoom on the beginning of training).
        title: the figure's title.
        notes: where to say what the figure leaves out (non-positive eigenvalues cannot be
            drawn on the log scale; how many were hidden goes here).

    Raises:
        NoData: the run has no ``"eigen"`` lines with eigenvalues.
    """
    eig = run.eigen_points
    if eig.empty:
        raise NoData('no "eigen" lines with eigenvalues')
    lam = run.eigenvalue_matrix()
    it = x_values(run, eig, "iteration")
    ok = converged_mask(eig)
    se = stderr_matrix(eig, lam.shape[1], descending=True)
    sel = np.ones(len(it), bool) if until is None else it <= until
    lam, it, ok = lam[sel], it[sel], ok[sel]
    se = None if se is None else se[sel]
    positive = np.isfinite(lam) & (lam > 0)
    if not positive.any():
        raise NoData("no positive eigenvalue to draw on a log scale")
    hidden = int((np.isfinite(lam) & (lam <= 0)).sum())
    if hidden and notes is not None:
        notes.append(
            f"{hidden} non-positive eigenvalue(s) of {int(np.isfinite(lam).sum())} are not "
            "drawn on the log scale."
        )
    metric = _eval_metric([run])
    tr = run.frame("train")
    second = metric is not None or (not tr.empty and "loss" in tr.columns)
    fig = Figure(figsize=(7.5, 6.0 if second else 4.0))
    gs = fig.add_gridspec(
        2 if second else 1, 2, width_ratios=[40, 1], height_ratios=[2, 1] if second else [1],
        wspace=0.04, hspace=0.08,
    )
    ax = fig.add_subplot(gs[0, 0])
    cax = fig.add_subplot(gs[0, 1])
    ax2 = fig.add_subplot(gs[1, 0], sharex=ax) if second else None
    k = lam.shape[1]
    colours = rank_colours(k)
    for i in reversed(range(k)):
        m = positive[:, i] & ok
        ax.plot(it[m], lam[m, i], color=colours[i], lw=1.0, **_marker(int(m.sum())))
    _draw_quality(ax, it, lam, ok, se, colours, positive, notes)
    if draw_stability_lines(ax, run, until):
        ax.legend(fontsize=8, loc="lower right")
    log_y(ax)
    ax.set_ylabel("eigenvalue λᵢ")
    cmap = ListedColormap(colours)
    norm = BoundaryNorm(np.arange(0.5, k + 1.5), k)
    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax)
    cbar.set_label("rank i")
    cbar.set_ticks(list(range(1, k + 1, max(1, math.ceil(k / 10)))))
    ax.set_title(title or f"Top {k} Hessian eigenvalues — {run.name}", fontsize=10)
    epoch_axis(ax, run)
    if ax2 is not None:
        if metric is not None:
            for split in ("train", "val", "test"):
                ev = eval_frame(run, split)
                if ev.empty or metric not in ev.columns:
                    continue
                x = x_values(run, ev, "iteration")
                keep = np.ones(len(x), bool) if until is None else x <= until
                y = _metric_values(ev, metric)
                ax2.plot(x[keep], y[keep], color=SPLIT_COLOURS.get(split), label=split,
                         **_marker(int(keep.sum())))
            ax2.set_ylabel(_metric_label(metric))
            if metric == "perplexity":
                log_y(ax2)
        else:
            x = x_values(run, tr, "iteration")
            keep = np.ones(len(x), bool) if until is None else x <= until
            y = numeric(tr, "loss")
            ax2.plot(x[keep], y[keep], color="0.3", label="training loss")
            _log_if_positive(ax2, y[keep])
            ax2.set_ylabel("training loss")
        legend_outside(ax2)
        ax2.set_xlabel("iteration")
        ax.tick_params(labelbottom=False)
    else:
        ax.set_xlabel("iteration")
    if until is not None:
        ax.set_xlim(left=min(0.0, float(np.nanmin(it))), right=until)
    return fig


def _draw_quality(
    ax: Any,
    it: np.ndarray,
    lam: np.ndarray,
    ok: np.ndarray,
    se: np.ndarray | None,
    colours: list[Any],
    positive: np.ndarray,
    notes: list[str] | None,
) -> None:
    """Hollow markers at unconverged points and ±1 standard-error bands (log-scale safe)."""
    for i in range(lam.shape[1]):
        bad = positive[:, i] & ~ok
        if bad.any():
            ax.plot(it[bad], lam[bad, i], ls="none", marker="o", ms=5, mfc="none",
                    mec=colours[i], mew=1.0)
        if se is not None:
            m = positive[:, i] & ok & np.isfinite(se[:, i])
            if m.sum() >= 2:
                lo = lam[m, i] - se[m, i]
                ax.fill_between(it[m], np.where(lo > 0, lo, lam[m, i] * 1e-3),
                                lam[m, i] + se[m, i], color=colours[i], alpha=0.2, lw=0)
    if notes is None:
        return
    n_bad = int((~ok).sum())
    if n_bad:
        notes.append(
            f"{n_bad} of {len(ok)} tracking point(s) did not converge (hollow markers, left out "
            "of the lines and of the summary numbers)."
        )
    if se is not None:
        notes.append("Bands: ±1 standard error of λᵢ over the Hessian subset (sampling error).")


def plot_training(run: RunData, *, notes: list[str] | None = None) -> Figure:
    """Training loss (the ``"train"`` lines), evaluation loss and accuracy per split, and the
    learning rate when it changes, against the iteration.
    """
    tr = run.frame("train")
    has_train = not tr.empty and "loss" in tr.columns
    splits = [s for s in ("train", "val", "test") if not eval_frame(run, s).empty]
    if not has_train and not splits:
        raise NoData('no "train" or "eval" lines')
    metric = _eval_metric([run])
    lr = numeric(tr, "lr") if has_train else np.array([])
    lr_changes = np.isfinite(lr).sum() > 1 and np.nanmax(lr) > np.nanmin(lr)
    n = 1 + (metric is not None) + bool(lr_changes)
    fig = Figure(figsize=(4.3 * n, 3.6))
    axes = list(fig.subplots(1, n, squeeze=False)[0])
    ax = axes.pop(0)
    values: list[float] = []
    if has_train:
        y = numeric(tr, "loss")
        ax.plot(x_values(run, tr), y, color="0.25", lw=1.0, label="training (running mean)")
        values += list(y)
    for split in splits:
        ev = eval_frame(run, split)
        if "loss" in ev.columns and ev["loss"].notna().any():
            y = numeric(ev, "loss")
            ax.plot(x_values(run, ev), y, color=SPLIT_COLOURS.get(split), lw=1.0,
                    label=f"{split} (eval)", **_marker(len(ev)))
            values += list(y)
    _log_if_positive(ax, values)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("Loss", fontsize=10)
    legend_outside(ax)
    if metric is not None:
        ax = axes.pop(0)
        for split in splits:
            ev = eval_frame(run, split)
            if metric in ev.columns and ev[metric].notna().any():
                ax.plot(x_values(run, ev), _metric_values(ev, metric),
                        color=SPLIT_COLOURS.get(split), label=split, **_marker(len(ev)))
        if metric == "perplexity":
            log_y(ax)
        ax.set_xlabel("iteration")
        ax.set_ylabel(_metric_label(metric))
        ax.set_title(metric.capitalize(), fontsize=10)
        legend_outside(ax)
    elif notes is not None and splits:
        notes.append("The evaluations hold neither accuracy nor perplexity.")
    if lr_changes:
        ax = axes.pop(0)
        ax.plot(x_values(run, tr), lr, color="tab:purple")
        ax.set_xlabel("iteration")
        ax.set_ylabel("learning rate")
        ax.set_title("Learning rate", fontsize=10)
        _log_if_positive(ax, lr)
    fig.tight_layout()
    return fig


def plot_angles(run: RunData, *, notes: list[str] | None = None) -> Figure:
    """Principal angles (degrees) between consecutive tracked top-k eigenbases."""
    eig = run.eigen_points
    has_max = not eig.empty and "angle_max" in eig.columns and eig["angle_max"].notna().any()
    has_all = not eig.empty and "angles" in eig.columns and eig["angles"].map(
        lambda v: isinstance(v, list) and len(v) > 0
    ).any()
    if not (has_max or has_all):
        raise NoData('the "eigen" lines hold no "angle_max" or "angles"')
    unit = None
    if "angle_unit" in eig.columns and eig["angle_unit"].notna().any():
        unit = str(eig["angle_unit"].dropna().iloc[0]).lower()
    scale = 1.0 if unit and unit.startswith("deg") else 180.0 / math.pi
    x = x_values(run, eig, "iteration")
    fig = Figure(figsize=(7.0, 3.8))
    ax = fig.add_subplot()
    if has_all:
        lists = [v if isinstance(v, list) else [] for v in eig["angles"]]
        k = max(len(v) for v in lists)
        mat = np.full((len(lists), k), np.nan)
        for i, v in enumerate(lists):
            mat[i, : len(v)] = [np.nan if a is None else float(a) for a in v]
        colours = colormaps["viridis"]
        for j in range(k):
            # viridis up to 0.85: its yellow end vanishes on white
            ax.plot(x, mat[:, j] * scale, color=colours(0.85 * j / max(1, k - 1)), lw=0.8,
                    alpha=0.8,
                    label=f"angle {j + 1}" if k <= 10 else None)
    if has_max:
        am = numeric(eig, "angle_max") * scale
        ax.plot(x, am, color="black", lw=1.6, label="largest angle", **_marker(len(eig)))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("iteration")
    ax.set_ylabel("principal angle (°)")
    ax.set_title("Rotation of the top-k eigenspace between consecutive tracking points",
                 fontsize=10)
    legend_outside(ax, fontsize=7)
    epoch_axis(ax, run)
    return fig


# -- several runs -----------------------------------------------------------------------------


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def differing_keys(runs: Sequence[RunData], ignore: Sequence[str] = IGNORED_KEYS) -> list[str]:
    """Dotted config keys whose values differ between the runs (in first-seen order)."""
    flat = [flatten_config(r.config) for r in runs]
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    return [
        k
        for k in keys
        if k not in ignore and len({_canon(f.get(k)) for f in flat}) > 1
    ]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if v is None:
        return "—"
    return str(v)


#: How a differing config key is named in a run's label (the paper's symbols).
LABEL_SYMBOLS = {"lr": "η", "batch_size": "S", "optimizer.gamma": "γ", "optimizer.k": "k"}
#: Keys shown first in a label, in this order (the optimizer's name as a bare word).
LABEL_ORDER = ("optimizer.name", "lr", "batch_size", "optimizer.gamma")


def _label_part(key: str, name: str, flat: dict[str, Any]) -> str | None:
    value = flat.get(key)
    if key == "optimizer.name":
        if value is None:
            return None
        base = flat.get("optimizer.nudge_base")
        if value == "nsgd" and base not in (None, "sgd"):
            return f"NSGD({str(base).upper()})"  # Nudged Adam, AdamW, RMSprop
        return str(value).upper()
    if key in ("optimizer.betas", "optimizer.eps") and value is None:
        return None  # the SGD family has none
    if key == "optimizer.gamma" and flat.get("optimizer.name") != "nsgd":
        return None  # γ means something only for Nudged SGD
    text = _fmt(value)
    return f"{name}={text if len(text) <= 24 else text[:23] + '…'}"


def run_labels(
    runs: Sequence[RunData], max_keys: int = 3, by_name: bool = False
) -> tuple[list[str], list[str]]:
    """One label per run, and the config keys that differ between the runs.

    ``by_name``: the runs' folder names (a preset's run names, which its findings use too).
    Otherwise the differing keys make the label, the paper's symbols first
    (``"NSGD, η=0.1, γ=10"``; γ only for NSGD runs, the optimizer by its name); other keys are
    shown by their last part unless two would collide. Runs with no differing key, or
    still-equal labels, are told apart by their folder names.
    """
    keys = differing_keys(runs)
    if by_name and len({r.name for r in runs}) == len(runs):
        return [r.name for r in runs], keys
    ordered = [k for k in LABEL_ORDER if k in keys] + [k for k in keys if k not in LABEL_ORDER]
    shown = ordered[:max_keys]
    last = [k.rsplit(".", 1)[-1] for k in shown]
    names = [
        LABEL_SYMBOLS.get(k)
        or (k if last.count(k.rsplit(".", 1)[-1]) > 1 else k.rsplit(".", 1)[-1])
        for k in shown
    ]
    flat = [flatten_config(r.config) for r in runs]
    if shown:
        labels = [
            ", ".join(p for n, k in zip(names, shown) if (p := _label_part(k, n, f)) is not None)
            for f in flat
        ]
    else:
        labels = [r.name for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} ({r.name})" if shown else r.name for lab, r in zip(labels, runs)]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} #{i + 1}" for i, lab in enumerate(labels)]
    return labels, keys


def _sort_key(v: Any) -> tuple[int, float, str]:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, _canon(v))


def run_colours(runs: Sequence[RunData], keys: Sequence[str] | None = None) -> list[Any]:
    """Colours ordered by the first differing key's value, as in the paper's Fig. 3: red, green,
    blue for increasing η (decreasing batch size); more runs get a red → violet scale.
    """
    if keys is None:
        keys = differing_keys(runs)
    n = len(runs)
    order = list(range(n))
    if keys:
        k = keys[0]
        vals = [flatten_config(r.config).get(k) for r in runs]
        order = sorted(range(n), key=lambda i: _sort_key(vals[i]),
                       reverse=k.rsplit(".", 1)[-1] == "batch_size")
    palette = (
        ["tab:red", "tab:green", "tab:blue"][:n] if n <= 3 else rank_colours(n)
    )
    colours: list[Any] = [None] * n
    for rank, i in enumerate(order):
        colours[i] = palette[rank]
    return colours


def plot_sweep(
    runs: Sequence[RunData],
    labels: Sequence[str],
    colours: Sequence[Any],
    *,
    notes: list[str] | None = None,
) -> Figure:
    """λ₁ (solid) and λ₂ (dashed) of every run on one log axis (Fig. 3, Fig. 5 right), and the
    training loss (Fig. 5 left). Epochs on x when every run's steps per epoch are known.
    """
    has_eig = [not r.eigen_points.empty for r in runs]
    has_loss = [not r.frame("train").empty and "loss" in r.frame("train").columns for r in runs]
    if not any(has_eig) and not any(has_loss):
        raise NoData('no run has "eigen" or "train" lines')
    x = common_x(runs)
    n = int(any(has_eig)) + int(any(has_loss))
    fig = Figure(figsize=(5.2 * n, 4.0))
    axes = list(fig.subplots(1, n, squeeze=False)[0])
    if any(has_eig):
        ax = axes.pop(0)
        hidden = 0
        for run, lab, c, ok in zip(runs, labels, colours, has_eig):
            if not ok:
                continue
            lam = run.eigenvalue_matrix()
            xs = x_values(run, run.eigen_points, x)
            for i, style in ((0, "-"), (1, "--")):
                if i >= lam.shape[1]:
                    continue
                y = lam[:, i]
                m = np.isfinite(y) & (y > 0)
                hidden += int((np.isfinite(y) & (y <= 0)).sum())
                good = converged_mask(run.eigen_points)
                ax.plot(xs[m & good], y[m & good], style, color=c, lw=1.1,
                        label=f"{lab}" if i == 0 else None)
                if (m & ~good).any():  # unconverged points: hollow, off the line
                    ax.plot(xs[m & ~good], y[m & ~good], ls="none", marker="o", ms=4,
                            mfc="none", mec=c)
        log_y(ax)
        ax.set_xlabel(_x_label(x))
        ax.set_ylabel("λ₁ (solid), λ₂ (dashed)")
        ax.set_title("Two largest Hessian eigenvalues", fontsize=10)
        if not any(has_loss):
            legend_outside(ax)
        if hidden and notes is not None:
            notes.append(f"{hidden} non-positive λ₁/λ₂ value(s) are not drawn on the log scale.")
        missing = [lab.lstrip("_") for lab, ok in zip(labels, has_eig) if not ok]
        if missing and notes is not None:
            notes.append("No eigenvalues for: " + ", ".join(missing) + ".")
    if any(has_loss):
        ax = axes.pop(0)
        values: list[float] = []
        for run, lab, c, ok in zip(runs, labels, colours, has_loss):
            if not ok:
                continue
            tr = run.frame("train")
            y = numeric(tr, "loss")
            ax.plot(x_values(run, tr, x), y, color=c, lw=1.0, label=lab)
            values += list(y)
        _log_if_positive(ax, values)
        ax.set_xlabel(_x_label(x))
        ax.set_ylabel("training loss")
        ax.set_title("Training loss", fontsize=10)
        legend_outside(ax)  # one legend for both panels: the runs' colours
    fig.tight_layout()
    return fig


def plot_accuracy_norms(
    runs: Sequence[RunData],
    labels: Sequence[str],
    colours: Sequence[Any],
    *,
    fro_k: int | None = 5,
    notes: list[str] | None = None,
) -> Figure:
    """Fig. 6: training and validation accuracy of each run, and ‖H‖₂ = λ₁ (solid) with
    ‖H‖_F ≈ √(Σ λᵢ²) over the top ``fro_k`` (dashed) on a log scale, against the epoch.
    """
    metric = _eval_metric(runs, ("train", "val"))
    has_eig = [not r.eigen_points.empty for r in runs]
    if metric is None and not any(has_eig):
        raise NoData('no run has "eval" lines with accuracy or "eigen" lines')
    x = common_x(runs)
    panels: list[str] = []
    if metric is not None:
        for split in ("train", "val"):
            if any(not eval_frame(r, split).empty for r in runs):
                panels.append(split)
    if any(has_eig):
        panels.append("norms")
    fig = Figure(figsize=(4.4 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        if panel == "norms":
            for run, lab, c, ok in zip(runs, labels, colours, has_eig):
                if not ok:
                    continue
                xs = x_values(run, run.eigen_points, x)
                good = converged_mask(run.eigen_points)
                l1 = np.where(good, run.eigenvalue_matrix()[:, 0], np.nan)
                fro = np.array([frobenius(v, fro_k) for v in run.eigen_points["eigenvalues"]])
                fro[~good] = np.nan  # as in the summaries
                m1 = np.isfinite(l1) & (l1 > 0)
                m2 = np.isfinite(fro) & (fro > 0)
                ax.plot(xs[m1], l1[m1], "-", color=c, lw=1.1, label=lab)
                ax.plot(xs[m2], fro[m2], "--", color=c, lw=1.1)
            log_y(ax)
            top = "all" if fro_k is None else f"top {fro_k}"
            ax.set_ylabel(f"‖H‖₂ (solid), ‖H‖_F from {top} λ (dashed)")
            ax.set_title("Sharpness", fontsize=10)
        else:
            for run, lab, c in zip(runs, labels, colours):
                ev = eval_frame(run, panel)
                if ev.empty or metric not in ev.columns:
                    continue
                ax.plot(x_values(run, ev, x), _metric_values(ev, metric), color=c, lw=1.1,
                        label=lab, **_marker(len(ev)))
            ax.set_ylabel(f"{panel} {_metric_label(metric)}")
            ax.set_title(f"{'Training' if panel == 'train' else 'Validation'} {metric}",
                         fontsize=10)
            if metric == "perplexity":
                log_y(ax)
        ax.set_xlabel(_x_label(x))
    legend_outside(axes[-1])  # one legend for all panels: the runs' colours
    if notes is not None and metric is None:
        notes.append("No accuracy or perplexity was evaluated: only the norms are drawn.")
    fig.tight_layout()
    return fig
