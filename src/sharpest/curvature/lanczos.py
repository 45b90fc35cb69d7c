"""Thick-restart Lanczos with full reorthogonalisation for the top-k eigenpairs of a symmetric
operator (Wu & Simon, 2000).

Why not `scipy.sparse.linalg.eigsh`: ARPACK's implicit restarts spend products rebuilding a
basis of `ncv ≥ 2k+1` vectors every cycle, its stopping test is on a tolerance it does not let
us relate to |λ| per pair, and it cannot be warm-started from several previous eigenvectors.
Here the basis only grows until the k wanted Ritz pairs have small residuals, is restarted
(thick: keeping the best Ritz vectors) only when it would exceed a memory budget, and a start
from the previous eigenvectors converges in a handful of products when they changed little.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from sharpest.curvature.adapt import as_operator

WHICH = ("LM", "LA", "SA")


class LinearOperator(Protocol):
    """What `lanczos` needs: a size and a product with a flat vector."""

    size: int

    def matvec(self, vector: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class EigenResult:
    """Eigenpairs of a symmetric operator (plain, immutable data: ``dataclasses.replace`` makes
    a changed copy; :meth:`to_state` / :meth:`from_state` round-trip it through checkpoints).

    Attributes
    ----------
    values: (k,) float64, sorted descending — by |λ| for ``which="LM"``, by λ for ``"LA"``;
        ascending by λ for ``"SA"``.
    vectors: (k, size), unit norm, row i pairs with ``values[i]``.
    residuals: (k,) ‖H vᵢ − λᵢ vᵢ‖, from the Lanczos relation (exact up to rounding with full
        reorthogonalisation; no extra product is spent on them).
    n_matvecs: products with the operator that this call made.
    converged: whether every residual met ``tol·|λᵢ|``.
    """

    values: np.ndarray
    vectors: Tensor
    residuals: np.ndarray
    n_matvecs: int
    converged: bool
    which: str = "LM"
    seconds: float = 0.0
    restarts: int = 0
    history: list[int] = field(default_factory=list, repr=False)

    @property
    def k(self) -> int:
        return len(self.values)

    def to_state(self, iteration: int | None = None) -> dict[str, Any]:
        """Checkpoint-safe plain data (tensors on the CPU, numbers, strings), loadable with
        ``torch.load(..., weights_only=True)``; ``iteration``: where it was computed."""
        return {
            "values": torch.as_tensor(np.asarray(self.values, dtype=np.float64)),
            "vectors": self.vectors.detach().cpu(),
            "residuals": torch.as_tensor(np.asarray(self.residuals, dtype=np.float64)),
            "n_matvecs": int(self.n_matvecs),
            "converged": bool(self.converged),
            "which": str(self.which),
            "seconds": float(self.seconds),
            "iteration": iteration,
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Any], device: torch.device | str | None = None
    ) -> EigenResult:
        """Inverse of :meth:`to_state` (vectors moved to ``device`` when given)."""
        return cls(
            values=state["values"].numpy().astype(np.float64),
            vectors=state["vectors"].to(device) if device is not None else state["vectors"],
            residuals=state["residuals"].numpy().astype(np.float64),
            n_matvecs=int(state["n_matvecs"]),
            converged=bool(state["converged"]),
            which=str(state.get("which", "LM")),
            seconds=float(state.get("seconds", 0.0)),
        )


def _order(theta: np.ndarray, which: str) -> np.ndarray:
    if which == "LM":
        return np.argsort(-np.abs(theta), kind="stable")
    if which == "LA":
        return np.argsort(-theta, kind="stable")
    return np.argsort(theta, kind="stable")


def _orthogonalize(w: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
    """Project `w` off the rows of `basis` twice ("twice is enough", Giraud et al. 2005).

    Returns the projected vector and the total coefficients basis·w.
    """
    coeffs = basis @ w
    w = w - basis.T @ coeffs
    again = basis @ w
    w = w - basis.T @ again
    return w, coeffs + again


def lanczos(
    op: LinearOperator,
    k: int = 5,
    which: str = "LM",
    tol: float = 1e-4,
    max_matvecs: int | None = None,
    init: Tensor | None = None,
    seed: int = 0,
    *,
    max_basis: int | None = None,
    max_basis_bytes: float = 2 * 2**30,
) -> EigenResult:
    """Top-k eigenpairs of the symmetric operator `op` by Lanczos.

    Parameters
    ----------
    op: anything with ``size`` and ``matvec(v)`` (e.g. :class:`HessianOperator`); if it has
        ``matmat`` it is not needed.
    k: number of eigenpairs, ``1 ≤ k < op.size``.
    which: ``"LM"`` largest magnitude (the paper's order), ``"LA"`` largest algebraic, ``"SA"``
        smallest algebraic.
    tol: a pair is converged when ‖Hx − θx‖ ≤ tol·max(|θ|, ε·‖T‖), T the projected matrix.
    max_matvecs: stop (``converged=False``) after this many products.
    init: start vectors ``(m, size)``, e.g. the previous eigenvectors when tracking along
        training: the Krylov space is started from their normalised sum (each row normalised),
        which contains the wanted eigenvectors to first order when they moved little. It pays
        only then (``benchmarks/warm_start.py``: 0.56–0.65× a cold start when the top-5 turned
        by 0.9°, 0.75–0.96× when they turned by 79° in one SGD step). A direction that has just
        entered the top k has little weight in such a start; at a loose ``tol`` (1e-2) the
        solve may then converge to λ_{k+1} in place of λ_k.
    seed: seed of the random start vector (and of the vectors that replace an exhausted
        Krylov space).
    max_basis: most basis vectors kept before a thick restart; default from
        ``max_basis_bytes`` (basis stored in float64 on the operator's device, allocated as it
        grows) and at most ``max(100, 4k)``; at least ``k + 8`` and at most ``size``.

    Returns
    -------
    EigenResult with float64 values and vectors in the operator's dtype.
    """
    start_time = time.perf_counter()
    op = as_operator(op)  # also scipy LinearOperators, curvlinops: anything with shape and @
    n = int(op.size)
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k >= n:
        raise ValueError(f"k={k} must be smaller than the operator size {n}")
    if tol <= 0:
        raise ValueError(f"tol must be positive, got {tol}")
    device = getattr(op, "device", torch.device("cpu"))
    out_dtype = getattr(op, "dtype", torch.float64)

    if max_basis is None:
        # Past a few times k more basis vectors barely speed convergence; restarts are cheap.
        max_basis = min(int(max_basis_bytes // (8 * n)), max(100, 4 * k))
    max_basis = min(n, max(max_basis, k + 8, 2 * k))
    limit = max_matvecs if max_matvecs is not None else max(100 * k, 10 * max_basis)

    generator = torch.Generator(device="cpu").manual_seed(seed)

    def random_vector() -> Tensor:
        return torch.randn(n, generator=generator, dtype=torch.float64).to(device)

    if init is not None:
        init = torch.as_tensor(init)
        if init.dim() == 1:
            init = init.unsqueeze(0)
        if init.dim() != 2 or init.shape[1] != n:
            raise ValueError(f"init must have shape (m, {n}), got {tuple(init.shape)}")
        rows = init.to(device=device, dtype=torch.float64)
        norms = rows.norm(dim=1, keepdim=True)
        if not torch.isfinite(rows).all() or (norms == 0).any():
            raise ValueError("init vectors must be finite and nonzero")
        start = (rows / norms).sum(0)
        if start.norm() < 1e-8 * math.sqrt(rows.shape[0]):
            start = start + 1e-3 * random_vector()
    else:
        start = random_vector()

    # Grown by doubling up to max_basis + 1 rows: the budget is a cap, not an allocation.
    basis = torch.empty(min(max_basis + 1, 2 * k + 2), n, dtype=torch.float64, device=device)
    proj = np.zeros((max_basis + 1, max_basis + 1))  # T = Qᵀ H Q, arrow + tridiagonal
    basis[0] = start / start.norm()
    j = 0  # number of basis vectors whose product is known
    n_matvecs = restarts = 0
    history: list[int] = []
    theta = y = None
    beta = 0.0
    converged = False

    while True:
        w = op.matvec(basis[j].to(out_dtype)).to(device=device, dtype=torch.float64)
        n_matvecs += 1
        if not torch.isfinite(w).all():
            raise FloatingPointError("the operator returned a non-finite product")
        w, coeffs = _orthogonalize(w, basis[: j + 1])
        c = coeffs.cpu().numpy()
        proj[: j + 1, j] = c
        proj[j, : j + 1] = c
        beta = float(w.norm())
        j += 1

        t = proj[:j, :j]
        theta, y = np.linalg.eigh(0.5 * (t + t.T))
        wanted = _order(theta, which)[: min(k, j)]
        resid = np.abs(beta * y[-1, wanted])
        scale = max(np.abs(theta).max(), np.finfo(float).tiny)
        floor = np.finfo(np.float64).eps ** (2 / 3) * scale
        threshold = tol * np.maximum(np.abs(theta[wanted]), floor)
        history.append(n_matvecs)
        # An exhausted (invariant) Krylov space has zero residuals but may miss further copies
        # of a repeated eigenvalue, or pairs the start vector had no component along.
        exhausted = beta <= 1e-12 * scale or beta == 0.0
        # Unless the caller supplied the start space (init), an invariant space is not trusted.
        if j >= k and np.all(resid <= threshold) and (init is not None or not exhausted):
            converged = True
            break
        if n_matvecs >= limit or j >= n:
            converged = j >= n and len(wanted) == k
            break

        if exhausted:
            # The Krylov space is invariant: continue with a fresh direction orthogonal to it
            # (this is also how repeated eigenvalues get found).
            w, _ = _orthogonalize(random_vector(), basis[:j])
            w, _ = _orthogonalize(w, basis[:j])
            beta_next = 0.0
        else:
            beta_next = beta

        if j == max_basis:
            # Thick restart: keep the best Ritz vectors and the residual direction; the
            # coupling of the residual to the kept Ritz vectors (s = β·y_last) reappears in the
            # next product's reorthogonalisation coefficients.
            keep = min(max_basis - 1, max(k + (max_basis - k) // 2, k + 1))
            order = _order(theta, which)[:keep]
            ritz = torch.from_numpy(np.ascontiguousarray(y[:, order].T)).to(device)
            new = ritz @ basis[:j]
            basis[:keep] = new
            proj[:] = 0.0
            proj[np.arange(keep), np.arange(keep)] = theta[order]
            if not exhausted:
                s = beta * y[-1, order]
                proj[keep, :keep] = s
                proj[:keep, keep] = s
            j = keep
            restarts += 1
        else:
            proj[j, j - 1] = proj[j - 1, j] = beta_next
        if j >= basis.shape[0]:
            grown = torch.empty(min(max_basis + 1, 2 * basis.shape[0]), n, dtype=basis.dtype,
                                device=device)
            grown[:j] = basis[:j]
            basis = grown
        basis[j] = w / w.norm()

    order = _order(theta, which)[:k]
    vectors = torch.from_numpy(np.ascontiguousarray(y[:, order].T)).to(device) @ basis[: len(theta)]
    vectors = vectors / vectors.norm(dim=1, keepdim=True)
    residuals = np.abs(beta * y[-1, order])
    return EigenResult(
        values=theta[order].astype(np.float64),
        vectors=vectors.to(out_dtype),
        residuals=residuals,
        n_matvecs=n_matvecs,
        converged=converged and len(order) == k,
        which=which,
        seconds=time.perf_counter() - start_time,
        restarts=restarts,
        history=history,
    )
