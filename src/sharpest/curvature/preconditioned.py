"""The preconditioned Hessian P⁻¹H of an adaptive optimizer, as a symmetric operator.

An optimizer that steps ``θ ← θ − η P⁻¹ m`` with a diagonal, positive P is, near a minimum and
with P frozen, gradient descent (with momentum) on the quadratic whose curvature is P⁻¹H; its
stability is set by the eigenvalues of P⁻¹H, the *preconditioned sharpness* (Cohen et al., 2022,
*Adaptive gradient methods at the edge of stability*). P⁻¹H is not symmetric, but it is similar
to the symmetric

    A = P^(-1/2) H P^(-1/2)            (P⁻¹H = P^(-1/2) A P^(1/2)),

so both have the same (real) eigenvalues, and :func:`~sharpest.curvature.lanczos` on A gives
them. Eigenvectors map back: if ``A w = λ w`` then ``x = P^(-1/2) w`` is a right eigenvector of
P⁻¹H (``P⁻¹H x = λ x``, :meth:`PreconditionedOperator.right_eigenvectors`), and ``y = P^(1/2) w``
a left one (``yᵀ P⁻¹H = λ yᵀ``, i.e. an eigenvector of H P⁻¹). The x's are orthogonal in the
P-inner product (``xᵢᵀ P xⱼ = wᵢᵀ wⱼ = 0`` for i ≠ j), not in the Euclidean one. By
Sylvester's law of inertia A has as many negative eigenvalues as H.

One product of A is one product of H plus two diagonal scalings.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sharpest.curvature.adapt import ScipyStyle, as_operator
from sharpest.curvature.preconditioner import PreconditionerError, diagonal_preconditioner

__all__ = ["PreconditionedOperator"]


class PreconditionedOperator(ScipyStyle):
    """``A = P^(-1/2) H P^(-1/2)``, whose eigenvalues are those of P⁻¹H (module docstring).

    Args:
        op: the Hessian (or any symmetric operator with ``size`` and ``matvec``, e.g.
            :class:`~sharpest.curvature.HessianOperator`; scipy-style operators are wrapped).
        preconditioner: a ``torch.optim`` Adam, AdamW, RMSprop or Adagrad whose state gives P
            (:func:`~sharpest.curvature.preconditioner.diagonal_preconditioner`; read once, now:
            build a new operator after further steps), mapped to ``op.params`` (required then);
            or the diagonal of P as a flat tensor of ``op.size`` positive entries.

    ``size``, ``matvec``, ``matmat`` (rows), ``device``, ``dtype`` (float64) and scipy's
    ``shape`` / ``@`` / ``to_scipy()``; ``diagonal`` is P (float64); ``n_matvecs`` counts the
    products of A (each is one of H).

    Raises:
        PreconditionerError: P not positive and finite, of the wrong size, or an optimizer
            whose state gives none (not stepped yet, unsupported kind).
    """

    def __init__(self, op: Any, preconditioner: Any) -> None:
        self.op = as_operator(op)
        self.size = int(self.op.size)
        self.device = torch.device(getattr(self.op, "device", "cpu"))
        if isinstance(preconditioner, Tensor):
            diagonal = preconditioner.detach()
        else:
            params = getattr(op, "params", None)
            if params is None:
                raise PreconditionerError(
                    f"{type(op).__name__} has no params: an optimizer's state can be mapped only "
                    "onto an operator over model parameters (e.g. HessianOperator); pass the "
                    "diagonal P as a tensor instead"
                )
            diagonal = diagonal_preconditioner(preconditioner, params)
        diagonal = diagonal.to(device=self.device, dtype=torch.float64).reshape(-1)
        if diagonal.numel() != self.size:
            raise PreconditionerError(
                f"the diagonal P has {diagonal.numel()} entries, the operator {self.size}"
            )
        bad = int((~torch.isfinite(diagonal) | (diagonal <= 0)).sum())
        if bad:
            raise PreconditionerError(
                f"P must be positive and finite: {bad} of its {self.size} entries are not"
            )
        self.diagonal = diagonal
        self._scale = diagonal.rsqrt()  # P^(-1/2)
        self.n_matvecs = 0

    def matmat(self, vectors: Tensor) -> Tensor:
        """``A vᵢ`` for the rows of ``vectors`` ``(m, size)``, as rows (float64)."""
        v = vectors.to(device=self.device, dtype=torch.float64) * self._scale
        if hasattr(self.op, "matmat"):
            hv = self.op.matmat(v)
        else:
            hv = torch.stack([self.op.matvec(row) for row in v])
        self.n_matvecs += v.shape[0]
        return hv.to(device=self.device, dtype=torch.float64) * self._scale

    def matvec(self, vector: Tensor) -> Tensor:
        """``A v`` for one flat vector."""
        if vector.dim() != 1:
            raise ValueError(
                f"expected a flat vector of shape ({self.size},), got {tuple(vector.shape)}"
            )
        return self.matmat(vector.unsqueeze(0))[0]

    def right_eigenvectors(self, vectors: Tensor) -> Tensor:
        """Eigenvectors ``w`` of A (rows) as unit-norm right eigenvectors ``x ∝ P^(-1/2) w`` of
        P⁻¹H (``P⁻¹H x = λ x``), rows in the same order.
        """
        x = vectors.to(device=self.device, dtype=torch.float64) * self._scale
        return x / x.norm(dim=-1, keepdim=True)

    def __repr__(self) -> str:
        return f"PreconditionedOperator({self.op!r}, size={self.size})"
