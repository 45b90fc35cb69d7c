"""Quantities the paper derives from eigenpairs: norms of the Hessian, angles between bases."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from sharpest.curvature.lanczos import LinearOperator, lanczos
from sharpest.record_values import frobenius


def spectral_norm(op: LinearOperator, tol: float = 1e-4, seed: int = 0, **kwargs) -> float:
    """‖H‖₂ = max |λᵢ|: the largest-magnitude eigenvalue's absolute value, by Lanczos."""
    return float(abs(lanczos(op, k=1, which="LM", tol=tol, seed=seed, **kwargs).values[0]))


def frobenius_from_topk(values: Sequence[float] | np.ndarray) -> float:
    """The paper's estimate of ‖H‖_F from the top-k eigenvalues: √(Σᵢ λᵢ²).

    It is a lower bound of the true Frobenius norm √(Σ over all n eigenvalues of λ²); the
    paper (Table 1) uses k = 5.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("need at least one eigenvalue")
    return frobenius(v.tolist(), k=None)


def _orthonormal_rows(basis: Tensor) -> Tensor:
    if basis.dim() == 1:
        basis = basis.unsqueeze(0)
    q, _ = torch.linalg.qr(basis.double().T)
    return q.T


def principal_angles(a: Tensor, b: Tensor) -> np.ndarray:
    """Principal angles (radians, ascending) between the spans of the rows of `a` and `b`.

    With orthonormal bases Qa, Qb the cosines are the singular values of Qa Qbᵀ
    (Björck & Golub, 1973); min(ka, kb) angles are returned. 0 means a shared direction,
    π/2 an orthogonal one. The largest angle tells how far the top-k subspace rotated.
    """
    if a.dim() > 2 or b.dim() > 2 or a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"bases must be (k, n) with the same n, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    qa, qb = _orthonormal_rows(a.cpu()), _orthonormal_rows(b.cpu())
    if qa.shape[0] < qb.shape[0]:
        qa, qb = qb, qa
    cross = qb @ qa.T
    cosines = torch.linalg.svdvals(cross).clamp(0.0, 1.0).numpy()  # descending
    # arccos loses small angles (cos rounds to 1); the sines of the part of span(b) outside
    # span(a) resolve them (Knyazev & Argentati, 2002), as scipy.linalg.subspace_angles does.
    sines = torch.linalg.svdvals(qb - cross @ qa).clamp(0.0, 1.0).numpy()  # descending
    small = cosines[::-1] ** 2 >= 0.5
    angles = np.where(small, np.arcsin(sines), np.arccos(cosines[::-1]))
    return np.sort(angles)
