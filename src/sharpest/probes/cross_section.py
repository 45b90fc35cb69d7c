"""The loss along an eigenvector in units of SGD's typical step (paper Sec. 3.2, Fig. 4 left).

For an eigenvector eᵢ of the Hessian at θ(t) and the typical step Δθ̄ᵢ(t) = η·E|⟨g⁽ˢ⁾, eᵢ⟩|
(:func:`sharpest.probes.gradients.typical_step`), the cross-section is

    k ↦ L(θ(t) + k·Δθ̄ᵢ(t)·eᵢ(t))

for k on a grid (default the authors' {0, ±¼, ±½, ±1, ±2, ±4, ±8}).

k_min (the smallest |k| at which the loss has changed by a relative amount r) condenses a curve
into one number; see :func:`k_min` for the exact definition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from sharpest.probes.shift import ParameterShift

__all__ = ["DEFAULT_KS", "CRITERIA", "cross_section", "k_min", "kmin_average"]

DEFAULT_KS: tuple[float, ...] = (-8, -4, -2, -1, -0.5, -0.25, 0, 0.25, 0.5, 1, 2, 4, 8)
CRITERIA = ("increase", "change")


def cross_section(
    shift: ParameterShift,
    direction: Tensor,
    step: float,
    ks: Sequence[float] = DEFAULT_KS,
    loss0: float | None = None,
) -> np.ndarray:
    """L(θ + k·step·direction) for each k of ``ks`` (float64 array, same order).

    θ is restored bit-exactly after every evaluation.

    Args:
        shift: the probe loss at shifted parameters.
        direction: the flat direction.
        step: the length of one unit of k along it (e.g. the typical step Δθ̄ᵢ).
        ks: the grid of k.
        loss0: L(θ), if already known: reused for k = 0 instead of a new forward pass.
    """
    direction = direction.to(torch.float64)
    out = np.empty(len(ks), dtype=np.float64)
    for j, k in enumerate(ks):
        if k == 0:
            out[j] = shift.loss() if loss0 is None else loss0
        else:
            out[j] = shift.loss_along(direction, float(k) * float(step))
    return out


def _exceeds(value: float, loss0: float, threshold: float, criterion: str) -> bool:
    if math.isnan(value):
        return False
    if math.isinf(value):
        return True
    if criterion == "increase":
        return value - loss0 >= threshold * abs(loss0)
    return abs(value - loss0) >= threshold * abs(loss0)


def k_min(
    ks: Sequence[float],
    losses: Sequence[float],
    threshold: float,
    loss0: float | None = None,
    criterion: str = "increase",
) -> float | None:
    """The smallest grid |k| > 0 at which the loss has moved by ``threshold`` relative to L(θ).

    Definition (the authors' plotting code, made explicit): with L₀ = ``loss0``, k_min is the
    smallest |k| > 0 of the grid such that the loss at +|k| **or** at −|k| (either side,
    whichever grid points exist) satisfies

    - ``criterion="increase"`` (default, the authors'): L ≥ (1 + threshold)·L₀ (for L₀ ≥ 0), or
    - ``criterion="change"`` (the paper's wording "changes by"): |L − L₀| ≥ threshold·|L₀|.

    A non-finite loss counts as crossed. The value is a grid point (no interpolation), as in
    the paper's averages.

    Args:
        ks: the grid.
        losses: the loss at each grid point.
        threshold: the relative change.
        loss0: L₀ (default the curve's own value at k = 0, i.e. L(θ(t)) on the same probe loss).
        criterion: ``"increase"`` or ``"change"``.

    Returns:
        k_min, or ``None`` if no grid point crosses ("beyond the grid"), not the authors' 0,
        which would read as "sharpest" and drag averages down; :func:`kmin_average` reports how
        many records never crossed.

    Raises:
        ValueError: an unknown criterion, as many losses as grid points not given, or no
            ``loss0`` for a grid without k = 0.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    ks_arr = np.asarray(ks, dtype=np.float64)
    ls_arr = np.asarray(losses, dtype=np.float64)
    if ks_arr.shape != ls_arr.shape:
        raise ValueError(f"{ks_arr.size} grid points but {ls_arr.size} losses")
    if loss0 is None:
        zero = np.flatnonzero(ks_arr == 0)
        if zero.size == 0:
            raise ValueError("the grid has no k = 0; pass loss0")
        loss0 = float(ls_arr[zero[0]])
    for mag in np.unique(np.abs(ks_arr[ks_arr != 0])):  # ascending
        side = ls_arr[np.abs(ks_arr) == mag]
        if any(_exceeds(float(v), loss0, threshold, criterion) for v in side):
            return float(mag)
    return None


def kmin_average(values: Sequence[float | None], last: int | None = None) -> dict[str, float]:
    """Average of k_min over the last ``last`` records (all if None), skipping "never crossed".

    The paper averages over the last 100 iterations (25 probe points at 4 iterations each).

    Args:
        values: k_min of each record, None where it never crossed.
        last: how many of the last records to average (None: all).

    Returns:
        ``{"mean", "median", "n", "n_crossed", "fraction_crossed"}`` (NaN where empty).
    """
    vals = list(values)[-last:] if last else list(values)
    crossed = np.array(
        [float(v) for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))],
        dtype=np.float64,
    )
    n = len(vals)
    return {
        "mean": float(crossed.mean()) if crossed.size else math.nan,
        "median": float(np.median(crossed)) if crossed.size else math.nan,
        "n": float(n),
        "n_crossed": float(crossed.size),
        "fraction_crossed": float(crossed.size / n) if n else math.nan,
    }
