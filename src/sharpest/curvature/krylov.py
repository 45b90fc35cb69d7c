"""A plain Lanczos recurrence that keeps its whole basis: what trace deflation and stochastic
Lanczos quadrature need (``lanczos`` returns only the top-k Ritz pairs, not the basis or T).

With full reorthogonalisation (twice) the rows of ``basis`` are orthonormal to rounding and
``T = Q H Qᵀ`` is tridiagonal with diagonal ``alpha`` and off-diagonal ``beta``. Each
``alpha[j] = q_jᵀ H q_j`` is computed from the product itself, so ``Σ alpha = tr(Q H Qᵀ)``
exactly (no extra product).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["KrylovBasis", "krylov_basis", "products"]


@dataclass
class KrylovBasis:
    """An orthonormal Krylov basis ``basis`` (m, n) float64 and its tridiagonal projection."""

    basis: Tensor
    alpha: np.ndarray
    beta: np.ndarray
    n_matvecs: int

    def tridiagonal(self) -> np.ndarray:
        m = len(self.alpha)
        t = np.diag(self.alpha)
        if m > 1:
            t += np.diag(self.beta[: m - 1], 1) + np.diag(self.beta[: m - 1], -1)
        return t


def products(op: Any, vectors: Tensor) -> Tensor:
    """``op`` applied to the rows of ``vectors`` (float64 out), by ``matmat`` when it has one."""
    dtype = getattr(op, "dtype", torch.float64)
    if hasattr(op, "matmat"):
        out = op.matmat(vectors.to(dtype))
    else:
        out = torch.stack([op.matvec(v.to(dtype)) for v in vectors])
    out = out.to(dtype=torch.float64, device=vectors.device)
    if not torch.isfinite(out).all():
        raise FloatingPointError("the operator returned a non-finite product")
    return out


def _project_off(w: Tensor, rows: Tensor | None) -> Tensor:
    if rows is None or rows.shape[0] == 0:
        return w
    w = w - rows.T @ (rows @ w)
    return w - rows.T @ (rows @ w)


def krylov_basis(
    op: Any, start: Tensor, steps: int, *, against: Tensor | None = None
) -> KrylovBasis:
    """``steps`` Lanczos steps from ``start`` (one product each), full reorthogonalisation.

    Stops early, with fewer rows, when the Krylov space becomes invariant (β ≈ 0).

    Args:
        op: anything with ``size`` and ``matvec``.
        start: the start vector ``(n,)``.
        steps: the number of steps (products), at most the dimension left.
        against: orthonormal rows (k, n) the basis is kept orthogonal to — the recurrence then
            runs on the deflated operator P⊥ H P⊥ (P⊥ = I − AᵀA), so the new basis extends
            span(A).

    Raises:
        ValueError: a start vector in the span of ``against``.
    """
    n = start.numel()
    device = start.device
    q = _project_off(start.to(torch.float64).reshape(-1), against)
    if float(q.norm()) == 0.0:
        raise ValueError("the start vector lies in the span of the deflated vectors")
    steps = min(int(steps), n - (0 if against is None else against.shape[0]))
    basis = torch.empty(max(steps, 0), n, dtype=torch.float64, device=device)
    alpha = np.zeros(max(steps, 0))
    beta = np.zeros(max(steps, 0))
    q = q / q.norm()
    scale = 0.0
    used = 0
    for j in range(steps):
        basis[j] = q
        w = products(op, q.unsqueeze(0))[0].to(device)
        used += 1
        alpha[j] = float(q @ w)
        w = _project_off(w, against)
        w = _project_off(w, basis[: j + 1])  # full reorthogonalisation, twice
        b = float(w.norm())
        beta[j] = b
        scale = max(scale, abs(alpha[j]), b)
        if j + 1 == steps or b <= 1e-10 * max(scale, np.finfo(float).tiny):
            return KrylovBasis(basis[: j + 1], alpha[: j + 1], beta[: j + 1], used)
        q = w / b
    return KrylovBasis(basis[:0], alpha[:0], beta[:0], used)
