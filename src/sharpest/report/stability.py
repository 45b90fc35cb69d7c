"""The stability line: where gradient descent on a quadratic stops being stable, against λ₁.

On a quadratic with curvature λ along a direction, gradient descent with step η contracts iff
``λ < 2/η``; heavy-ball momentum μ (PyTorch's SGD, dampening 0: v ← μv + g, θ ← θ − ηv) moves
the threshold to ``2(1 + μ)/η`` (the recurrence's characteristic roots stay inside the unit
circle iff ηλ < 2(1 + μ)). Nudged SGD steps γη along its top-k directions, so there the line is
``2(1 + μ)/(γη)`` (``2/(γη)`` without momentum); elsewhere it is the plain line.

The threshold drawn is the optimizer's own when the ``"eigen"`` lines carry
``stability_threshold`` (recorded by the tracker at each point from the optimizer in use:
:func:`sharpest.curvature.stability_threshold`); otherwise it is computed from the config with
the same torch-free formulas (:mod:`sharpest.paper_metrics`): ``2(1+μ)/η`` for SGD,
``(2 + 2β₁)/((1 − β₁)η)`` for Adam/AdamW (Cohen et al., 2022), ``2(1+μ)/η`` for RMSprop. For
an adaptive optimizer the line bounds the *preconditioned* sharpness λ₁(P⁻¹H) (the
``preconditioned`` field), not λ₁(H): the λ₁ comparisons are then left out and the
``preconditioned_*`` ones made instead.

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

from sharpest.config import ADAPTIVE_OPTIMIZERS
from sharpest.paper_metrics import adam_stability_threshold, sgd_stability_threshold
from sharpest.record_values import number as _number
from sharpest.report.reader import RunData

__all__ = [
    "ADAPTIVE",
    "NEAR_LINE",
    "draw_stability_lines",
    "fraction_near_line",
    "is_adaptive",
    "line_label",
    "stability_frame",
    "stability_summary",
    "stability_threshold",
]

#: Relative half-width of "at the line".
NEAR_LINE = 0.1
#: Optimizer names whose line bounds λ(P⁻¹H) rather than λ(H) (the config's, nudged or not).
ADAPTIVE = ADAPTIVE_OPTIMIZERS


def stability_threshold(lr: Any, momentum: float = 0.0, gamma: float = 1.0) -> Any:
    """``2(1 + μ)/(γη)`` (numbers or arrays;
    :func:`sharpest.paper_metrics.sgd_stability_threshold`).
    """
    lr = np.asarray(lr, dtype=float)
    if np.any(lr <= 0):
        raise ValueError("learning rates must be positive")
    out = np.asarray(sgd_stability_threshold(lr, momentum, gamma=gamma), dtype=float)
    return float(out) if out.ndim == 0 else out


def _base(run: RunData) -> str:
    """The update rule underneath: the optimizer's name, or ``nudge_base`` for ``nsgd``."""
    name = _optimizer(run)[0]
    opt = (run.config or {}).get("optimizer") or {}
    if name == "nsgd" and isinstance(opt, dict):
        return str(opt.get("nudge_base") or "sgd")
    return name


def _config_line(run: RunData, lr: np.ndarray) -> tuple[np.ndarray, str]:
    """The optimizer's line from the config (for lines without ``stability_threshold``) and its
    label.
    """
    name, momentum, _ = _optimizer(run)
    name = _base(run)
    if name in ("adam", "adamw"):
        opt = (run.config or {}).get("optimizer") or {}
        betas = opt.get("betas") if isinstance(opt, dict) else None
        beta1 = _number(betas[0]) if isinstance(betas, list) and betas else 0.9
        return np.asarray(adam_stability_threshold(lr, beta1), float), "(2+2β₁)/((1−β₁)η)"
    label = "2/η" if (name in ADAPTIVE and momentum == 0) else "2(1+μ)/η"
    return stability_threshold(lr, momentum) * np.ones_like(lr), label


def is_adaptive(run: RunData) -> bool:
    """Whether the run's update rule preconditions (Adam, AdamW, RMSprop, nudged or not; or
    ``preconditioned`` lines).
    """
    return _base(run) in ADAPTIVE or "preconditioned" in run.eigen_points.columns


def line_label(run: RunData) -> str:
    """How the drawn threshold reads: ``2(1+μ)/η``, ``(2+2β₁)/((1−β₁)η)`` or ``2/η``."""
    return _config_line(run, np.ones(1))[1]


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


def stability_frame(run: RunData) -> pd.DataFrame:
    """One row per tracking point: ``iteration``, ``lambda1``, ``lr``, ``line`` (the
    optimizer's threshold: recorded ``stability_threshold``, else from the config),
    ``nudged_line`` (2(1+μ)/(γη), for ``nsgd`` only, else NaN), ``line_lambda1`` (the line of
    λ₁(H)'s direction; NaN for adaptive optimizers), ``preconditioned1`` (λ₁(P⁻¹H), NaN when
    not recorded) and ``line_preconditioned`` (its line; NaN unless adaptive). Empty when the
    run has no eigenvalues or no learning rate.
    """
    eig = run.eigen_points
    if eig.empty or "iteration" not in eig.columns:
        return pd.DataFrame()
    lam = run.eigenvalue_matrix()[:, 0]
    it = pd.to_numeric(eig["iteration"], errors="coerce").to_numpy(dtype=float)
    frame = pd.DataFrame({"iteration": it, "lambda1": lam})
    frame["recorded_line"] = (
        pd.to_numeric(eig["stability_threshold"], errors="coerce").to_numpy(dtype=float)
        if "stability_threshold" in eig.columns else np.nan
    )
    frame["preconditioned1"] = (
        eig["preconditioned"].map(
            lambda v: _number(v[0]) if isinstance(v, list) and v else np.nan
        ).to_numpy(dtype=float)
        if "preconditioned" in eig.columns else np.nan
    )
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
    from_config = _config_line(run, frame["lr"].to_numpy(dtype=float))[0]
    recorded = frame.pop("recorded_line").to_numpy(dtype=float)
    frame["line"] = np.where(np.isfinite(recorded), recorded, from_config)
    adaptive = is_adaptive(run)
    frame["nudged_line"] = (
        stability_threshold(frame["lr"].to_numpy(), momentum, gamma)
        if name == "nsgd" and not adaptive else np.nan
    )
    frame["line_lambda1"] = (np.nan if adaptive
                             else frame["nudged_line"] if name == "nsgd" else frame["line"])
    frame["line_preconditioned"] = frame["line"] if adaptive else np.nan
    return frame


def stability_summary(run: RunData, within: float = NEAR_LINE) -> dict[str, float]:
    """``lambda1_near_line_fraction`` (|λ₁ − line| ≤ 10 % of the line), ``stability_line_final``
    (the line of λ₁'s direction at the last point) and ``lambda1_over_line_final`` (λ₁/line
    there). Empty when the run has no eigenvalues.
    """
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
    pre = frame[np.isfinite(frame["preconditioned1"]) & np.isfinite(frame["line_preconditioned"])]
    if not pre.empty:
        out["preconditioned_near_line_fraction"] = fraction_near_line(
            pre["preconditioned1"], pre["line_preconditioned"], within)
        out["preconditioned_line_final"] = float(pre["line_preconditioned"].iloc[-1])
        out["preconditioned_over_line_final"] = float(
            pre["preconditioned1"].iloc[-1] / pre["line_preconditioned"].iloc[-1])
    return {k: v for k, v in out.items() if math.isfinite(v)}


def draw_stability_lines(ax: Any, run: RunData, until: float | None = None) -> bool:
    """Draw the optimizer's line (dashed: 2(1+μ)/η for SGD) and, for nsgd, 2(1+μ)/(γη)
    (dotted) on ``ax``; False if unknown, or when the line bounds λ(P⁻¹H), not this axis' λ(H)
    (adaptive optimizers).
    """
    if is_adaptive(run):
        return False
    frame = stability_frame(run)
    if frame.empty:
        return False
    if until is not None:
        frame = frame[frame["iteration"] <= until]
        if frame.empty:
            return False
    it = frame["iteration"].to_numpy()
    ax.plot(it, frame["line"], "--", color="0.25", lw=0.9, label=line_label(run))
    if frame["nudged_line"].notna().any():
        ax.plot(it, frame["nudged_line"], ":", color="0.25", lw=1.1, label="2(1+μ)/(γη)")
    return True
