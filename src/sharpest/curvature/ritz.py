"""Which Ritz pairs are wanted, and when they are good enough: the orders of ``which`` and the
relative residual test shared by :func:`~sharpest.curvature.lanczos.lanczos` and its guard.

For ``which="LM"`` pairs rank by descending |θ|, for ``"LA"`` by descending θ, for ``"SA"`` by
ascending θ. A pair (θ, x) has converged when ‖Hx − θx‖ ≤ tol·max(|θ|, ε^(2/3)·scale), the floor
keeping pairs at θ ≈ 0 from demanding a residual below rounding (scale: the largest |θ| seen).
"""

from __future__ import annotations

import numpy as np

WHICH = ("LM", "LA", "SA")


def order(theta: np.ndarray, which: str) -> np.ndarray:
    """Indices of `theta`, best first in the order of `which` (stable)."""
    if which == "LM":
        return np.argsort(-np.abs(theta), kind="stable")
    if which == "LA":
        return np.argsort(-theta, kind="stable")
    return np.argsort(theta, kind="stable")


def beyond(value: float, threshold: float, which: str) -> float:
    """How far `value` lies past `threshold` in the order of `which` (positive: it ranks before
    it; for "LM" the difference of magnitudes).
    """
    if which == "LM":
        return abs(value) - abs(threshold)
    if which == "LA":
        return value - threshold
    return threshold - value


def thresholds(theta: np.ndarray, tol: float, scale: float) -> np.ndarray:
    """The residual each Ritz value in `theta` must meet: tol·max(|θ|, ε^(2/3)·scale)."""
    floor = np.finfo(np.float64).eps ** (2 / 3) * scale
    return tol * np.maximum(np.abs(theta), floor)


def residual_norms(c: np.ndarray, y: np.ndarray) -> np.ndarray:
    """‖Hx − θx‖ of the Ritz vectors with coefficients `y` (columns), from C = M[pending, mult]
    (:mod:`sharpest.curvature.lanczos_basis`): exact up to rounding, no product needed.
    """
    return np.linalg.norm(c @ y, axis=0) if len(c) else np.zeros(y.shape[1])
