"""The eigenvalue density of a symmetric operator by stochastic Lanczos quadrature (SLQ).

The spectral density ``ρ(λ) = (1/n) Σᵢ δ(λ − λᵢ)`` broadened by a Gaussian of width σ is
``ρ_σ(λ) = (1/n) tr g_σ(λ − H)``. For a probe v with ``‖v‖² = n`` drawn so that
``E[v vᵀ] = I`` (Rademacher, or a normalised Gaussian), ``vᵀ f(H) v / ‖v‖²`` is unbiased for
``(1/n) tr f(H)``; m steps of Lanczos from v give the Gauss quadrature
``vᵀ f(H) v / ‖v‖² ≈ Σⱼ τⱼ f(θⱼ)`` with θ the eigenvalues of the tridiagonal T and τⱼ the
squared first components of its eigenvectors (exact for polynomials of degree ≤ 2m − 1;
Golub & Meurant; Ubaru, Chen & Saad 2017). Averaging over probes:

    ρ_σ(λ) ≈ (1/n_v) Σ_v Σⱼ τ_{v,j} · exp(−(λ − θ_{v,j})² / 2σ²) / (σ√(2π)).

Every probe's weights sum to 1, so ρ_σ integrates to 1 (on a grid covering the nodes ± 6σ),
and its mean ``∫ λ ρ_σ(λ) dλ = (1/n_v) Σ τθ`` is the normalised-probe Hutchinson estimate of
tr(H)/n. Lanczos runs with full reorthogonalisation, so no ghost copies of the outlying
eigenvalues appear. Negative eigenvalues are nodes like any other; the grid covers them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from sharpest.curvature.krylov import krylov_basis

__all__ = ["DensityResult", "broadened_density", "spectral_density"]


@dataclass
class DensityResult:
    """A broadened eigenvalue density on a grid, and the quadrature it came from.

    Attributes:
        grid: (g,) eigenvalue coordinates, ascending.
        density: (g,) ρ_σ on the grid (integrates to 1 over a grid covering the nodes).
        n_matvecs: products spent.
        nodes: (probes, steps) Gauss quadrature nodes θ per probe.
        weights: (probes, steps) their weights τ (rows of a probe whose Krylov space closed
            early are padded with weight 0).
        sigma: the Gaussian broadening used.
        seconds: wall-clock time of the estimate.
    """

    grid: np.ndarray
    density: np.ndarray
    n_matvecs: int
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float
    seconds: float = 0.0

    def moment(self, power: int = 1) -> float:
        """``(1/n) tr(Hᵖ)`` estimated by the quadrature (unbroadened): mean over probes of
        Σ τ θᵖ (exact per probe for p ≤ 2·steps − 1).
        """
        return float((self.weights * self.nodes**power).sum(axis=1).mean())

    @property
    def mean(self) -> float:
        """∫ λ ρ(λ) dλ, an estimate of tr(H)/n."""
        return self.moment(1)


def broadened_density(
    grid: np.ndarray, nodes: np.ndarray, weights: np.ndarray, sigma: float
) -> np.ndarray:
    """``Σⱼ wⱼ · N(grid; nodesⱼ, σ²)`` divided by the number of probes (rows of nodes)."""
    nodes = np.atleast_2d(nodes)
    weights = np.atleast_2d(weights)
    out = np.zeros(len(grid))
    for theta, tau in zip(nodes, weights):
        d = (grid[:, None] - theta[None, :]) / sigma
        out += (np.exp(-0.5 * d * d) * tau[None, :]).sum(axis=1)
    return out / (len(nodes) * sigma * math.sqrt(2 * math.pi))


def spectral_density(
    op: Any,
    *,
    n_probes: int = 4,
    steps: int = 50,
    sigma: float | None = None,
    sigma_rel: float = 0.01,
    grid: np.ndarray | None = None,
    grid_size: int = 1000,
    probe: Literal["rademacher", "gaussian"] = "rademacher",
    seed: int = 0,
) -> DensityResult:
    """The eigenvalue density of ``op`` by stochastic Lanczos quadrature (see the module doc).

    Args:
        op: anything with ``size`` and ``matvec`` (e.g. :class:`HessianOperator`).
        n_probes: independent start vectors (the density's random error falls as
            1/√n_probes).
        steps: Lanczos steps per probe (``steps`` products each); capped at ``op.size``.
        sigma: Gaussian broadening in eigenvalue units; default ``sigma_rel`` × the spread of
            the nodes (largest minus smallest Ritz value).
        sigma_rel: the broadening relative to that spread, when ``sigma`` is None.
        grid: where to evaluate ρ; default ``grid_size`` points from the smallest node − 6σ to
            the largest + 6σ (negative eigenvalues included).
        grid_size: the number of points of the default grid.
        probe: ``"rademacher"`` (±1) or ``"gaussian"``, normalised to ‖v‖² = n.
        seed: seeds the probes.

    Returns:
        A :class:`DensityResult`: the density on the grid and the quadrature behind it.

    Raises:
        ValueError: ``n_probes`` or ``steps`` below 1, an unknown ``probe``, a broadening
            that is not positive, or a grid that is not 1-D, ascending, of 2 points or more.
    """
    start_time = time.perf_counter()
    if n_probes < 1 or steps < 1:
        raise ValueError(f"need n_probes ≥ 1 and steps ≥ 1, got {n_probes} and {steps}")
    if probe not in ("rademacher", "gaussian"):
        raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
    if sigma is not None and not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if not sigma_rel > 0:
        raise ValueError(f"sigma_rel must be positive, got {sigma_rel}")
    n = int(op.size)
    steps = min(int(steps), n)
    device = torch.device(getattr(op, "device", "cpu"))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    nodes = np.zeros((n_probes, steps))
    weights = np.zeros((n_probes, steps))
    used = 0
    for i in range(n_probes):
        if probe == "rademacher":
            v = 2.0 * torch.randint(0, 2, (n,), generator=generator).double() - 1.0
        else:
            v = torch.randn(n, generator=generator, dtype=torch.float64)
        kb = krylov_basis(op, v.to(device), steps)
        used += kb.n_matvecs
        theta, vecs = np.linalg.eigh(kb.tridiagonal())
        m = len(theta)
        nodes[i, :m] = theta
        nodes[i, m:] = theta[-1]
        weights[i, :m] = vecs[0, :] ** 2
    if sigma is None:
        spread = float(nodes.max() - nodes.min())
        sigma = sigma_rel * spread if spread > 0 else max(abs(float(nodes.max())), 1.0) * 1e-3
    if grid is None:
        grid = np.linspace(nodes.min() - 6 * sigma, nodes.max() + 6 * sigma, int(grid_size))
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 1 or len(grid) < 2 or np.any(np.diff(grid) <= 0):
        raise ValueError("grid must be a 1-D ascending array of at least 2 points")
    return DensityResult(
        grid=grid,
        density=broadened_density(grid, nodes, weights, sigma),
        n_matvecs=used,
        nodes=nodes,
        weights=weights,
        sigma=float(sigma),
        seconds=time.perf_counter() - start_time,
    )
