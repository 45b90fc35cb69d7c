"""The trace of a symmetric operator from products only: Hutchinson and Hutch++.

Hutchinson (1989): for probes z with E[z zᵀ] = I (Rademacher ±1 here),
``tr(H) = E[zᵀ H z]``; the mean of m samples has variance ``2(‖H‖_F² − Σᵢ Hᵢᵢ²)/m``, which
the few outlying eigenvalues of a network's Hessian dominate.

Hutch++ (Meyer, Musco, Musco & Woodruff, 2021) splits ``tr(H) = tr(Q H Qᵀ) + tr(P⊥ H P⊥)``
for orthonormal rows Q spanning (approximately) the top of the spectrum, P⊥ = I − QᵀQ: the first
term is computed exactly, Hutchinson estimates only the second, whose variance
``2‖P⊥HP⊥‖_F²`` no longer holds the outliers. Q comes from, cheapest first:

- ``deflate=EigenResult`` of this operator (e.g. the tracker's top-k at the same θ): free — for
  Ritz pairs of a Lanczos run, ``vᵢᵀ H vᵢ = λᵢ``, so ``tr(Q H Qᵀ) = Σ λᵢ`` costs no product;
- ``deflate=V`` (k, n) any vectors: orthonormalised, then k products give ``tr(Q H Qᵀ)``;
- ``sketch="lanczos"`` (default): a Krylov basis of ``deflate_dim`` Lanczos steps from a random
  start; the recurrence's diagonal gives ``tr(Q H Qᵀ)`` with no extra product, so each product
  buys one dimension (Chen & Hallman's "Krylov-aware" variant, 2023);
- ``sketch="random"``: the original Hutch++ range finder, Q = orth(H S) for Rademacher S,
  then H Qᵀ: two products per dimension.

The extra Krylov dimensions, if asked, extend span(deflate) (built orthogonally to it).

The standard error is honest: the exact part has none; the residual part's is the sample
standard deviation of its per-probe estimates over √m (Q is drawn independently of the
residual probes, so given Q the samples are i.i.d. and unbiased for ``tr(P⊥ H P⊥)``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from sharpest.curvature.krylov import krylov_basis, products
from sharpest.curvature.lanczos import EigenResult

__all__ = ["TraceResult", "trace"]

METHODS = ("hutch++", "hutchinson")


@dataclass
class TraceResult:
    """An estimate of tr(H).

    Attributes:
        value: the estimate, ``exact_part + mean(samples)``.
        stderr: its standard error (0 when the deflation spans the whole space).
        n_matvecs: products with the operator spent by this call (a free deflation counts 0).
        method: ``"hutch++"`` or ``"hutchinson"``.
        exact_part: ``tr(Q H Qᵀ)`` over the deflated subspace (0 for Hutchinson).
        deflation_dim: rows of Q.
        samples: the residual part's per-probe estimates ``zᵢᵀ P⊥HP⊥ zᵢ``.
        converged: whether the requested relative standard error was reached.
        seconds: wall-clock time of the estimate.
    """

    value: float
    stderr: float
    n_matvecs: int
    method: str
    exact_part: float = 0.0
    deflation_dim: int = 0
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    converged: bool = False
    seconds: float = 0.0

    @property
    def n_probes(self) -> int:
        return len(self.samples)

    @property
    def rel_stderr(self) -> float:
        return self.stderr / abs(self.value) if self.value else math.inf


def _rademacher(m: int, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    z = torch.randint(0, 2, (m, n), generator=generator, dtype=torch.int8)
    return (2.0 * z.to(torch.float64) - 1.0).to(device)


def _orthonormal(rows: Tensor) -> Tensor:
    q, r = torch.linalg.qr(rows.to(torch.float64).T)
    keep = r.diagonal().abs() > 1e-10 * max(float(r.diagonal().abs().max()), 1e-300)
    return q[:, keep].T.contiguous()


def _deflation(
    op: Any, deflate: EigenResult | Tensor | None, device: torch.device
) -> tuple[Tensor | None, float, int]:
    """Orthonormal rows Q, tr(Q H Qᵀ) and the products spent on it."""
    if deflate is None:
        return None, 0.0, 0
    if isinstance(deflate, EigenResult):
        v = deflate.vectors.to(device=device, dtype=torch.float64)
        gram = v @ v.T
        eye = torch.eye(v.shape[0], dtype=torch.float64, device=device)
        if float((gram - eye).abs().max()) <= 1e-6:
            # Ritz vectors of a Lanczos run on this operator: vᵢᵀ H vᵢ = λᵢ, free.
            return v, float(np.sum(deflate.values)), 0
        deflate = v  # not orthonormal: fall through and pay for tr(Q H Qᵀ)
    rows = torch.as_tensor(deflate).to(device)
    if rows.dim() == 1:
        rows = rows.unsqueeze(0)
    if rows.dim() != 2 or rows.shape[1] != op.size:
        raise ValueError(f"deflate must have shape (k, {op.size}), got {tuple(rows.shape)}")
    if not torch.isfinite(rows).all():
        raise ValueError("deflate vectors must be finite")
    q = _orthonormal(rows)
    hq = products(op, q)
    return q, float((q * hq).sum()), q.shape[0]


def trace(
    op: Any,
    *,
    method: Literal["hutch++", "hutchinson"] = "hutch++",
    rtol: float | None = 1e-2,
    max_matvecs: int = 1000,
    deflate: EigenResult | Tensor | None = None,
    deflate_dim: int | None = None,
    sketch: Literal["lanczos", "random"] = "lanczos",
    min_probes: int = 10,
    block: int = 8,
    seed: int = 0,
) -> TraceResult:
    """Estimate tr(H) of the symmetric operator ``op`` (see the module doc for the math).

    Args:
        op: anything with ``size`` and ``matvec`` (``matmat`` used when present), e.g.
            :class:`HessianOperator` or :class:`GGNOperator`.
        method: ``"hutch++"`` (deflate, then Hutchinson on the rest) or ``"hutchinson"``.
        rtol: stop once ``stderr ≤ rtol·|value|`` (after at least ``min_probes`` residual
            probes); ``None``: spend the whole budget.
        max_matvecs: budget of products for everything (deflation included); the result may
            stop short of ``rtol`` (``converged=False``).
        deflate: a known top-k (an :class:`EigenResult` of this operator at these parameters
            — free — or vectors (k, n), k products), hutch++ only.
        deflate_dim: Krylov (or random-sketch) dimensions added to the deflation; default 16
            without ``deflate``, 0 with it. At most a third of the budget.
        sketch: ``"lanczos"`` (one product per dimension) or ``"random"`` (original Hutch++,
            two).
        min_probes: residual probes before the stopping test is trusted (the standard error
            is estimated from their spread).
        block: probes per ``matmat`` call.
        seed: seeds the probes and the sketch.

    Returns:
        A :class:`TraceResult`: the estimate, its standard error and the products spent.

    Raises:
        ValueError: an unknown ``method`` or ``sketch``, a budget, tolerance or block size out
            of range, ``deflate`` with Hutchinson, or deflation vectors of the wrong shape.
    """
    start_time = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if sketch not in ("lanczos", "random"):
        raise ValueError(f"sketch must be 'lanczos' or 'random', got {sketch!r}")
    if rtol is not None and not rtol > 0:
        raise ValueError(f"rtol must be positive or None, got {rtol}")
    if max_matvecs < 1 or min_probes < 2 or block < 1:
        raise ValueError("need max_matvecs ≥ 1, min_probes ≥ 2 and block ≥ 1")
    if method == "hutchinson" and (deflate is not None or deflate_dim):
        raise ValueError("deflate/deflate_dim apply to method='hutch++' only")
    n = int(op.size)
    device = torch.device(getattr(op, "device", "cpu"))
    generator = torch.Generator(device="cpu").manual_seed(seed)

    q, exact, used = (None, 0.0, 0)
    if method == "hutch++":
        q, exact, used = _deflation(op, deflate, device)
        if deflate_dim is None:
            deflate_dim = 0 if deflate is not None else 16
        if deflate_dim < 0:
            raise ValueError(f"deflate_dim must be ≥ 0, got {deflate_dim}")
        per_dim = 1 if sketch == "lanczos" else 2
        room = n - (0 if q is None else q.shape[0])
        dim = min(int(deflate_dim), room, max((max_matvecs - used) // (3 * per_dim), 0))
        if dim > 0 and sketch == "lanczos":
            start = torch.randn(n, generator=generator, dtype=torch.float64).to(device)
            kb = krylov_basis(op, start, dim, against=q)
            used += kb.n_matvecs
            exact += float(np.sum(kb.alpha))
            q = kb.basis if q is None else torch.cat([q, kb.basis])
        elif dim > 0:
            s = _rademacher(dim, n, generator, device)
            if q is not None:
                s = s - (s @ q.T) @ q
            y = products(op, s)
            if q is not None:
                y = y - (y @ q.T) @ q
                y = y - (y @ q.T) @ q
            new = _orthonormal(y)
            hq = products(op, new)
            used += s.shape[0] + new.shape[0]
            exact += float((new * hq).sum())
            q = new if q is None else torch.cat([q, new])

    samples: list[float] = []
    full = q is not None and q.shape[0] >= n
    # No residual sample yet and the deflation does not span everything: nothing is known of
    # the rest, so the error is unbounded rather than zero.
    value, stderr, converged = exact, (0.0 if full else math.inf), full
    while not full and used < max_matvecs:
        m = min(block, max_matvecs - used)
        z = _rademacher(m, n, generator, device)
        if q is not None:
            z = z - (z @ q.T) @ q
            z = z - (z @ q.T) @ q
        hz = products(op, z)
        used += m
        samples += (z * hz).sum(dim=1).cpu().tolist()
        arr = np.asarray(samples)
        value = exact + float(arr.mean())
        stderr = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else math.inf
        if rtol is not None and len(arr) >= min_probes and stderr <= rtol * abs(value):
            converged = True
            break
    return TraceResult(
        value=value,
        stderr=stderr,
        n_matvecs=used,
        method=method,
        exact_part=exact,
        deflation_dim=0 if q is None else int(q.shape[0]),
        samples=np.asarray(samples, dtype=np.float64),
        converged=bool(converged),
        seconds=time.perf_counter() - start_time,
    )
