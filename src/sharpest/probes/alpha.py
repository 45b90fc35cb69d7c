"""The α-step probe (paper Sec. 3.2, Fig. 4 right): is SGD's step along eᵢ too long?

For mini-batch gradients g⁽ˢ⁾ₘ (m = 1…M) at θ, learning rate η and a unit direction u,

    ΔL(α) = (1/M) Σₘ L(θ − α·η·⟨gₘ, u⟩·u) − L(θ)

(u = eᵢ gives the paper's E[L(θ − αη g̃ᵢ)] − L(θ) with g̃ᵢ = ⟨g, eᵢ⟩eᵢ). Baselines so a reader can
tell whether the effect is specific to the sharpest direction: a random unit direction u (the
same formula), and the full SGD step ``(1/M) Σₘ L(θ − α·η·gₘ) − L(θ)``.

For a quadratic L with Hessian H, gradient ∇L(θ) and cₘ = ⟨gₘ, u⟩ the result is exactly

    ΔL(α) = ½·α²η²·(uᵀHu)·E[c²] − αη·⟨∇L(θ), u⟩·E[c],

so along an eigenvector (uᵀHu = λᵢ) the change is negative for small α and turns positive
beyond α = 2⟨∇L, u⟩E[c] / (ηλᵢE[c²]): SGD's step (α = 1) overshoots the floor of the bowl along
eᵢ when ηλᵢ is large against the signal-to-noise ratio of cₘ. The tests check it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sharpest.probes.gradients import GradientSample
from sharpest.probes.shift import ParameterShift

__all__ = ["DEFAULT_ALPHAS", "AlphaResult", "alpha_probe"]

DEFAULT_ALPHAS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)


@dataclass
class AlphaResult:
    """One direction's α-probe.

    Attributes:
        alphas: the step multipliers α.
        changes: ``(M, len(alphas))`` float64, L(θ − α·η·stepₘ) − L(θ) for each gradient m and
            α.
        loss0: L(θ).
        coefficients: ``(M,)`` the ⟨gₘ, u⟩ (None for the full step).
        n_evals: loss evaluations spent.
    """

    alphas: np.ndarray
    changes: np.ndarray
    loss0: float
    coefficients: np.ndarray | None
    n_evals: int

    @property
    def mean(self) -> np.ndarray:
        """E over the M gradients of the change in loss, per α."""
        return self.changes.mean(axis=0)

    @property
    def std(self) -> np.ndarray:
        """Sample standard deviation (ddof = 1; 0 when M = 1) of the change, per α."""
        m = self.changes.shape[0]
        return self.changes.std(axis=0, ddof=1) if m > 1 else np.zeros(self.changes.shape[1])

    @property
    def relative(self) -> np.ndarray:
        """The mean change relative to L(θ), per α (0.02 is a 2 % increase)."""
        return self.mean / abs(self.loss0) if self.loss0 else np.full(self.mean.shape, np.nan)


def alpha_probe(
    shift: ParameterShift,
    sample: GradientSample,
    lr: float,
    direction: Tensor | None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    loss0: float | None = None,
) -> AlphaResult:
    """The α-step probe along ``direction`` (unit, flat), or the full SGD step if it is None.

    Steps are −α·η·⟨gₘ, u⟩·u (or −α·η·gₘ) for each of the M gradients of ``sample`` and each α;
    θ is restored bit-exactly after every evaluation. Costs M·len(alphas) loss evaluations (plus
    one if ``loss0`` is not given).

    Args:
        shift: the probe loss at shifted parameters.
        sample: the M mini-batch gradients.
        lr: the learning rate η.
        direction: the unit direction u, or None for the full step.
        alphas: the step multipliers α.
        loss0: L(θ), if already known.
    """
    alphas_arr = np.asarray(alphas, dtype=np.float64)
    before = shift.n_evals
    if loss0 is None:
        loss0 = shift.loss()
    lr = float(lr)
    g = sample.gradients
    if direction is not None:
        u = direction.to(device=g.device, dtype=torch.float64)
        coefficients = sample.coefficients(u)[:, 0]
    else:
        coefficients = None
    changes = np.empty((sample.num, alphas_arr.size), dtype=np.float64)
    for m in range(sample.num):
        step = g[m].to(torch.float64) if coefficients is None else float(coefficients[m]) * u
        for j, a in enumerate(alphas_arr):
            changes[m, j] = shift.loss(-(a * lr) * step) - loss0
    return AlphaResult(
        alphas=alphas_arr,
        changes=changes,
        loss0=float(loss0),
        coefficients=coefficients,
        n_evals=shift.n_evals - before,
    )
