"""The stability line: where gradient descent on a quadratic stops being stable, against λ₁.

On a quadratic with curvature λ along a direction, gradient descent with step η contracts iff
``λ < 2/η``; heavy-ball momentum μ (PyTorch's SGD, dampening 0: v ← μv + g, θ ← θ − ηv) moves
the threshold to ``2(1 + μ)/η`` (the recurrence's characteristic roots stay inside the unit
circle iff ηλ < 2(1 + μ)). Nudged SGD steps γη along its top-k directions, so there the line is
``2(1 + μ)/(γη)`` (``2/(γη)`` without momentum); elsewhere it is the plain line.

"Within 10 %" is ``|λ₁ − line| ≤ 0.1 · line``; :func:`stability_summary` reports the fraction
of tracking points where that holds (the edge-of-stability regime of Cohen et al. 2021 shows as
a fraction near 1), with the line of the direction λ₁ lives in (the nudged line for ``nsgd``).
The learning rate of a point is the ``lr`` of the last ``"train"`` line at or before it
(schedules change it), else the config's ``lr``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from sharpest.record_values import number as _number
from sharpest.report.reader import RunData

__all__ = [
    "NEAR_LINE",
    "draw_stability_lines",
    "fraction_near_line",
    "stability_frame",
    "stability_summary",
    "stability_threshold",
]

#: Relative half-width of "at the line".
NEAR_LINE = 0.1


def stability_threshold(lr: Any, momentum: float = 0.0, gamma: float = 1.0) -> Any:
    """``2(1 + μ)/(γη)`` (numbers or arrays)."""
    if momentum < 0 or momentum >= 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    lr = np.asarray(lr, dtype=float)
    if np.any(lr <= 0):
        raise ValueError("learning rates must be positive")
    out = 2.0 * (1.0 + momentum) / (gamma * lr)
    return float(out) if out.ndim == 0 else out


def fraction_near_line(lambda1: Any, line: Any, within: float = NEAR_LINE) -> float:
    """Fraction of points with ``|λ₁ − line| ≤ within·line`` (NaN points are left out)."""
    lam = np.asarray(lambda1, dtype=float)
    line = np.broadcast_to(np.asarray(line, dtype=float), lam.shape)
    ok = np.isfinite(lam) & np.isfinite(line)
    if not ok.any():
        return math.nan
    return float(np.mean(np.abs(lam[ok] - line[ok]) <= within * line[ok]))


def _optimizer(run: RunData) -> tuple[str, float, float]:
    cfg = run.config or {}
    opt = cfg.get("optimizer") or {}
    name = str(opt.get("name", "sgd")) if isinstance(opt, dict) else str(opt)
    gamma = _number(opt.get("gamma", 1.0)) if isinstance(opt, dict) else 1.0
    momentum = _number(cfg.get("momentum", 0.0))
    return name, (0.0 if math.isnan(momentum) else momentum), (
        1.0 if math.isnan(gamma) else gamma)


def _adaptive(run: RunData) -> bool:
    """Whether the run's update rule is Adam, AdamW or RMSprop (nudged or not)."""
    from sharpest.config import ADAPTIVE_OPTIMIZERS  # torch-free, as this module
    opt = (run.config or {}).get("optimizer") or {}
    if not isinstance(opt, dict):
        return False
    name = opt.get("name")
    return name in ADAPTIVE_OPTIMIZERS or (name == "nsgd"
                                          and opt.get("nudge_base") in ADAPTIVE_OPTIMIZERS)


def stability_frame(run: RunData) -> pd.DataFrame:
    """One row per tracking point: ``iteration``, ``lambda1``, ``lr``, ``line`` (2(1+μ)/η),
    ``nudged_line`` (2(1+μ)/(γη), for ``nsgd`` only, else NaN) and ``line_lambda1`` (the line of
    λ₁'s direction). Empty when the run has no eigenvalues or no learning rate, and for Adam,
    AdamW and RMSprop, whose threshold bounds the preconditioned Hessian's λ₁, not this one's."""
    eig = run.eigen
    if eig.empty or "iteration" not in eig.columns or _adaptive(run):
        return pd.DataFrame()
    lam = run.eigenvalue_matrix()[:, 0]
    it = pd.to_numeric(eig["iteration"], errors="coerce").to_numpy(dtype=float)
    frame = pd.DataFrame({"iteration": it, "lambda1": lam})
    base_lr = _number((run.config or {}).get("lr"))
    tr = run.frame("train")
    if not tr.empty and {"iteration", "lr"} <= set(tr.columns):
        t_it = pd.to_numeric(tr["iteration"], errors="coerce").to_numpy(dtype=float)
        t_lr = pd.to_numeric(tr["lr"], errors="coerce").to_numpy(dtype=float)
        ok = np.isfinite(t_it) & np.isfinite(t_lr)
        order = np.argsort(t_it[ok], kind="stable")
        t_it, t_lr = t_it[ok][order], t_lr[ok][order]
        # The last "train" line at or before each point (NaN before the first one).
        idx = np.searchsorted(t_it, it, side="right") - 1
        frame["lr"] = np.where(idx >= 0, t_lr[np.clip(idx, 0, None)], np.nan) if len(t_it) \
            else np.nan
    else:
        frame["lr"] = np.nan
    frame["lr"] = frame["lr"].fillna(base_lr)
    frame = frame[np.isfinite(frame["lr"]) & (frame["lr"] > 0)].reset_index(drop=True)
    if frame.empty:
        return frame
    name, momentum, gamma = _optimizer(run)
    frame["line"] = stability_threshold(frame["lr"].to_numpy(), momentum)
    frame["nudged_line"] = (
        stability_threshold(frame["lr"].to_numpy(), momentum, gamma) if name == "nsgd"
        else np.nan
    )
    frame["line_lambda1"] = frame["nudged_line"] if name == "nsgd" else frame["line"]
    return frame


def stability_summary(run: RunData, within: float = NEAR_LINE) -> dict[str, float]:
    """``lambda1_near_line_fraction`` (|λ₁ − line| ≤ 10 % of the line), ``stability_line_final``
    (the line of λ₁'s direction at the last point) and ``lambda1_over_line_final`` (λ₁/line
    there). Empty when the run has no eigenvalues."""
    frame = stability_frame(run)
    if frame.empty:
        return {}
    out = {
        "lambda1_near_line_fraction": fraction_near_line(
            frame["lambda1"], frame["line_lambda1"], within),
        "stability_line_final": float(frame["line_lambda1"].iloc[-1]),
        "lambda1_over_line_final": float(frame["lambda1"].iloc[-1]
                                         / frame["line_lambda1"].iloc[-1]),
    }
    return {k: v for k, v in out.items() if math.isfinite(v)}


def draw_stability_lines(ax: Any, run: RunData, until: float | None = None) -> bool:
    """Draw 2(1+μ)/η (dashed) and, for nsgd, 2(1+μ)/(γη) (dotted) on ``ax``; False if unknown."""
    frame = stability_frame(run)
    if frame.empty:
        return False
    if until is not None:
        frame = frame[frame["iteration"] <= until]
        if frame.empty:
            return False
    it = frame["iteration"].to_numpy()
    ax.plot(it, frame["line"], "--", color="0.25", lw=0.9, label="2(1+μ)/η")
    if frame["nudged_line"].notna().any():
        ax.plot(it, frame["nudged_line"], ":", color="0.25", lw=1.1, label="2(1+μ)/(γη)")
    return True
