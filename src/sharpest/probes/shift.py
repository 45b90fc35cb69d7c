"""Evaluate the probe loss at shifted parameters θ + δ and put θ back bit-exactly.

The probe loss is the curvature engine's objective, :meth:`EmpiricalRisk.loss` (the function
whose Hessian :class:`HessianOperator` multiplies): the mean loss
over a fixed subset (no augmentation), in evaluation semantics, with the (λ/2)·‖θ‖² term, over
the operator's parameters. Probing with it keeps the cross-sections and the α-step probe on the
very function whose Hessian gave the eigenvectors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from sharpest.curvature import EmpiricalRisk, NonFiniteError, flatten, unflatten

__all__ = ["ParameterShift", "random_unit_vector"]


class ParameterShift:
    """Losses at θ + δ for flat shifts δ; θ is copied back (not subtracted) after each one.

    Use as a context manager: on exit (also on error) the parameters hold the values they had
    when the object was made, bit for bit::

        with ParameterShift(op) as shift:
            l0 = shift.loss()                       # L(θ)
            l1 = shift.loss(delta)                  # L(θ + δ)

    The shifted parameters are computed in float64 and rounded once to the parameters' dtype
    (``(θ + δ)`` rather than ``θ`` plus a rounded δ). A loss that is not finite (a diverging
    model far along a sharp direction) is returned as ``inf``.

    ``n_evals`` counts loss evaluations (each one forward pass over all of ``op``'s examples).
    """

    def __init__(self, op: EmpiricalRisk) -> None:
        self.op = op
        self.params: list[Tensor] = list(op.params)
        self.base: list[Tensor] = [p.detach().clone() for p in self.params]
        self.n_evals = 0
        self.n_grads = 0

    @property
    def size(self) -> int:
        return self.op.size

    @property
    def num_examples(self) -> int:
        return self.op.num_examples

    @property
    def theta(self) -> Tensor:
        """θ (the unshifted parameters) as a flat float64 vector."""
        return flatten(self.base).double()

    def restore(self) -> None:
        """Copy the saved θ back into the parameters."""
        with torch.no_grad():
            for p, b in zip(self.params, self.base):
                p.copy_(b)

    def _evaluate(self) -> float:
        self.n_evals += 1
        try:
            value = self.op.loss()
        except NonFiniteError:
            return math.inf
        return value if math.isfinite(value) else math.inf

    def _shift(self, delta: Tensor) -> None:
        if delta.shape != (self.size,):
            raise ValueError(
                f"expected a flat shift of shape ({self.size},), got {tuple(delta.shape)}"
            )
        parts = unflatten(delta.to(device=self.base[0].device, dtype=torch.float64), self.base)
        with torch.no_grad():
            for p, b, d in zip(self.params, self.base, parts):
                p.copy_((b.double() + d).to(p.dtype))

    def loss(self, delta: Tensor | None = None) -> float:
        """L(θ + δ) (L(θ) when ``delta`` is None), θ restored afterwards."""
        if delta is None:
            return self._evaluate()
        try:
            self._shift(delta)
            return self._evaluate()
        finally:
            self.restore()

    def gradient(self, delta: Tensor | None = None) -> Tensor:
        """∇L(θ + δ) as a flat float64 vector (``op.gradient()`` there), θ restored afterwards.

        ``n_grads`` counts them (each one forward and one backward pass over all examples).
        """
        self.n_grads += 1
        if delta is None:
            return self.op.gradient()
        try:
            self._shift(delta)
            return self.op.gradient()
        finally:
            self.restore()

    def loss_along(self, direction: Tensor, scale: float) -> float:
        """L(θ + scale·direction)."""
        return self.loss(direction.to(torch.float64) * float(scale))

    def __enter__(self) -> ParameterShift:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def random_unit_vector(
    size: int, generator: torch.Generator, device: torch.device | str | None = None
) -> Tensor:
    """A direction drawn uniformly on the unit sphere (normalised Gaussian), float64.

    Drawn on the CPU from ``generator`` (never from the global RNG, so training randomness is
    untouched), then moved to ``device``.
    """
    u = torch.randn(size, generator=generator, dtype=torch.float64)
    return (u / u.norm()).to(device)


def as_rows(vectors: Tensor | Sequence[Tensor]) -> Tensor:
    """Eigenvectors as a float64 ``(k, n)`` tensor."""
    if isinstance(vectors, Tensor):
        rows = vectors if vectors.dim() == 2 else vectors.unsqueeze(0)
    else:
        rows = torch.stack(list(vectors))
    return rows.to(torch.float64)
