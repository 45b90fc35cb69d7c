"""Eigenbasis checks and the projection ``P x = Vᵀ (V x)``.

A basis is a ``(k, n)`` tensor ``V`` whose rows ``e_1 … e_k`` are orthonormal and flat over the
optimizer's trainable parameters. ``P = Vᵀ V = Σᵢ eᵢ eᵢᵀ`` is the orthogonal projector onto their
span. It is never formed: ``P x`` costs two thin products, ``c = V x`` (k numbers) then ``Vᵀ c``,
done in float64 where the device has it, because ``x`` sums n ≈ 10⁵–10⁶ terms.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

#: Largest tolerated ``max |V Vᵀ − I|``. Ritz vectors of a reorthogonalized Lanczos run in
#: float32 stay orders of magnitude below it; a basis above it is most likely not an
#: orthonormal set at all (columns given as rows, unnormalized random directions, …).
ORTHONORMAL_TOL = 1e-3


def compute_dtype(device: torch.device) -> torch.dtype:
    """float64, except on devices without it (Apple MPS), where float32 is the best there is."""
    return torch.float32 if device.type == "mps" else torch.float64


def as_basis(
    basis: Any,
    k: int,
    n: int,
    *,
    device: torch.device,
    dtype: torch.dtype,
    orthonormalize: bool = False,
    tol: float = ORTHONORMAL_TOL,
) -> Tensor:
    """Check ``basis`` and return a private ``(k, n)`` copy of its leading ``k`` rows.

    Args:
        basis: a ``(m, n)`` tensor (or array) of rows with ``m >= k``, sorted leading first as in
            ``EigenResult.vectors``; a 1-D ``(n,)`` vector counts as one row; an object with a
            ``vectors`` attribute (an ``EigenResult``) is read through it. Rows past ``k`` are
            dropped, which lets a tracker that follows more eigenvectors than the optimizer
            uses hand over everything it has.
        k: number of rows the optimizer projects on.
        n: flat size of the optimizer's trainable parameters.
        device: where the copy is kept.
        dtype: the copy's dtype.
        orthonormalize: replace the rows by an orthonormal set spanning the same nested
            subspaces (QR with a positive diagonal: row i keeps the direction of the i-th
            Gram–Schmidt vector) instead of rejecting a non-orthonormal basis.
        tol: largest accepted ``max |V Vᵀ − I|``.

    Raises:
        ValueError: wrong shape, non-finite entries, rank-deficient rows, or rows that are
            not orthonormal within ``tol`` (when ``orthonormalize`` is false).
    """
    if hasattr(basis, "vectors"):
        basis = basis.vectors
    V = torch.as_tensor(basis)
    if V.ndim == 1:
        V = V.unsqueeze(0)
    if V.ndim != 2 or V.shape[1] != n or V.shape[0] < k:
        raise ValueError(
            f"eigenbasis must be a (k, n) = ({k}, {n}) tensor of orthonormal rows, flat over the "
            f"optimizer's trainable parameters in param-group order (extra rows after the first "
            f"{k} are ignored); got shape {tuple(V.shape)}"
        )
    if V.is_complex() or not V.is_floating_point():
        raise ValueError(f"eigenbasis must hold real floating-point numbers, got {V.dtype}")
    V = V[:k].to(device=device, dtype=dtype, copy=True)
    if not bool(torch.isfinite(V).all()):
        raise ValueError("eigenbasis has non-finite entries (NaN or inf)")
    if orthonormalize:
        Q, R = torch.linalg.qr(V.T)
        diag = torch.diagonal(R)
        scale = diag.abs().max() if diag.numel() else torch.zeros((), dtype=dtype)
        if bool((diag.abs() <= 1e-10 * scale).any()) or float(scale) == 0.0:
            raise ValueError("eigenbasis rows are linearly dependent; cannot orthonormalize them")
        V = (Q * torch.sign(diag)).T.contiguous()
    err = orthonormality_error(V)
    if err > tol:
        raise ValueError(
            f"eigenbasis rows are not orthonormal: max |V Vᵀ − I| = {err:.3g} > {tol:g}; "
            "pass orthonormalize=True to set_basis() to orthonormalize them (QR, leading rows "
            "first), or check that eigenvectors are rows, not columns"
        )
    return V


def orthonormality_error(V: Tensor) -> float:
    """``max |V Vᵀ − I|``, 0 for a perfectly orthonormal set of rows."""
    gram = V @ V.T
    eye = torch.eye(V.shape[0], dtype=V.dtype, device=V.device)
    return float((gram - eye).abs().max()) if V.shape[0] else 0.0


def project(V: Tensor, x: Tensor) -> Tensor:
    """``P x = Vᵀ (V x)`` for a flat vector ``x``, in ``V``'s dtype (never forms the n×n ``P``)."""
    x = x.to(dtype=V.dtype, device=V.device)
    return V.T.mv(V.mv(x))
