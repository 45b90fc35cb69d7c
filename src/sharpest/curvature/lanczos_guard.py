"""The guard of :func:`~sharpest.curvature.lanczos.lanczos`: a randomised certificate that no
eigenvalue beyond the k-th was missed.

Lanczos from one start vector cannot see a direction the start has no component along (a warm
start from the previous top-k misses an eigenvector that has just entered it; a repeated
eigenvalue shows one copy). So once the k wanted Ritz pairs (θᵢ, xᵢ) converge, a short Lanczos
chain runs from a fresh random vector z on the deflated operator

    B = P H P,   P = I − W Wᵀ,

W = [x₁ … x_k, g₁ … g_m] orthonormal: the k wanted Ritz vectors, plus converged Ritz vectors
of the solve that rank after θ_k (*extras*, below), plus members of a tie found earlier.

**The bound.** The guard's (l+1)-th Lanczos vector is q_{l+1} = p_l(B) z, p_l the orthonormal
Lanczos polynomials (p₀ = 1, β_l p_l(μ) = (μ − α_l) p_{l−1}(μ) − β_{l−1} p_{l−2}(μ)). For an
eigenpair (μ, u) of B, uᵀq_{l+1} = p_l(μ)·uᵀz, and the q's are orthonormal, so

    (uᵀz)² · Σ_{l=0}^{j} p_l(μ)² ≤ 1                      (a Christoffel-function bound).

Past the guard's extreme Ritz value every |p_l| grows with the distance, so the evaluation
point μ* below is the worst case for every μ beyond it. For z uniform on the unit sphere of
B's range (dimension n' = n − m − k), P(|uᵀz| ≤ ε) ≤ ε·√(2n'/π), hence

    P(a missed eigenvalue beyond μ*) ≤ √(2n'/π) / √(Σ_l p_l(μ*)²),

a probability over the guard's random start, not over the operator; the guard stops ("clear")
when it is at most ``risk``.

**Where the bound is evaluated.** A missed eigenpair (μ, u) of H with μ beyond θ_k(1 + tol)
(in the order of ``which``; nearer than that it is a *tie*) gives B a Rayleigh quotient of
Pu/‖Pu‖ equal to μ − Σ_w (μ − θ_w) c_w² / (1 − Σ_w c_w²), c_w = wᵀu. For an extra g (a Ritz
pair of the solve with residual r_g, ranking after θ_k by gap_g = |θ_k| − |θ_g| for "LM"),
|c_g| ≤ r_g / |μ − θ_g| ≤ r_g / gap_g, so B has an eigenvalue at least as far out as

    μ* = θ_k (1 + tol) − slack,   slack = Σ_g (r_g² / gap_g) / (1 − Σ_g (r_g / gap_g)²)

(moved toward the spectrum for "LM" at both ends, |θ_k|(1 + tol) − slack). Extras are taken
nearest θ_k first while r_g ≤ 0.1·gap_g and the slack stays below a tenth of the gap to the
first pair not taken. Deflating them removes the top of B's spectrum, which is what makes the
polynomial grow slowly at μ*: with the next few pairs converged the guard needs a fraction of
the products (the measurements are in ``benchmarks/results/lanczos_guard.md``).

**Verdicts.** After each guard product, with v the guard's extreme Ritz value:

- ``miss``: v lies beyond θ_k by more than tol·|θ_k|: a direction was missed; the solve takes
  it (and its pending rows) into its Rayleigh–Ritz and goes on;
- ``tie``: v lies within tol·|θ_k| of θ_k and its Ritz pair of H has converged (residual
  ≤ tol·|v|): λ_k and λ_{k+1} are equal to within the tolerance, as for a ± pair of equal
  magnitude or a flat spectrum; the member is deflated and the guard starts again;
- ``clear``: the bound above is at most ``risk`` (or B's Krylov space from z is exhausted);
- ``undecided``: out of products. The solve then ends ``converged=False`` with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from sharpest.curvature.lanczos_basis import LanczosBasis
from sharpest.curvature.ritz import beyond, order, residual_norms

GUARD_RISK = 1e-3
#: Products one guard chain may take before it is undecided (fewer where ``max_basis_bytes``
#: leaves its basis fewer rows: see ``lanczos``'s memory plan).
GUARD_MAX_PRODUCTS = 100
#: The guard's products, all runs of one solve together, stay below this share of its budget.
GUARD_SHARE = 0.5
#: Extras are deflated only when |gᵀu| ≤ LEAK for every missed eigenvector u.
LEAK = 0.1
#: At most this many extras (each is a row of the guard's basis).
MAX_EXTRAS = 16


@dataclass
class Deflation:
    """What the guard deflates — the solve's Ritz vectors with coefficient columns `columns`
    (the k wanted ones, then the extras) and the tie members — and how far the bound's point
    moves because of them.
    """

    space: LanczosBasis  # the solve's basis, where the Ritz vectors live
    columns: np.ndarray  # (multiplied rows, k + extras) Ritz coefficients
    ties: list[Tensor]
    extras: int

    @property
    def count(self) -> int:
        """Rows deflated."""
        return self.columns.shape[1] + len(self.ties)
    slack: float


@dataclass
class GuardOutcome:
    """The guard's verdict on a converged solve, and what it found."""

    verdict: str  # "clear", "miss", "tie", "undecided"
    vector: Tensor | None  # the guard's extreme Ritz vector (unit): a miss or a tie member
    value: float  # the guard's extreme Ritz value
    risk: float  # the bound reached (1.0 where it does not apply)
    products: int


def choose_deflation(
    space: LanczosBasis, theta: np.ndarray, y: np.ndarray, c: np.ndarray, wanted: np.ndarray,
    which: str, ties: list[Tensor], max_extras: int | None = None,
) -> Deflation:
    """The wanted Ritz vectors, the extras allowed by the leakage rule (at most `max_extras`,
    default :data:`MAX_EXTRAS`), and the tie members.
    """
    max_extras = MAX_EXTRAS if max_extras is None else max_extras
    theta_k = float(theta[wanted[-1]])
    others = np.setdiff1d(np.arange(len(theta)), wanted)
    gaps = np.array([-beyond(float(theta[i]), theta_k, which) for i in others])
    inside = others[gaps > 0]
    gaps = gaps[gaps > 0]
    by_gap = np.argsort(gaps, kind="stable")
    inside, gaps = inside[by_gap], gaps[by_gap]
    resid = residual_norms(c, y[:, inside]) if len(inside) else np.zeros(0)
    taken = 0
    while taken < min(len(inside), max_extras) and resid[taken] <= LEAK * gaps[taken]:
        taken += 1

    def slack_of(count: int) -> float:
        leak = float(np.sum((resid[:count] / gaps[:count]) ** 2))
        return float(np.sum(resid[:count] ** 2 / gaps[:count])) / (1.0 - leak)

    # The slack moves μ* toward B's top (the first pair not taken): keep it a tenth of that gap.
    while taken and taken < len(inside) and slack_of(taken) > 0.1 * gaps[taken]:
        taken -= 1
    columns = np.concatenate([wanted, inside[:taken]]).astype(int)
    return Deflation(space=space, columns=y[:, columns], ties=list(ties), extras=taken,
                     slack=slack_of(taken) if taken else 0.0)



def guard_point(theta_k: float, tol: float, slack: float, which: str) -> list[tuple[float, int]]:
    """μ* and the direction beyond it (+1: larger, −1: smaller) where a missed eigenvalue must
    lie; both ends for "LM".
    """
    if which == "LM":
        edge = abs(theta_k) * (1 + tol) - slack
        return [(edge, 1), (-edge, -1)]
    if which == "LA":
        return [(theta_k + tol * abs(theta_k) - slack, 1)]
    return [(theta_k - tol * abs(theta_k) + slack, -1)]


def run_guard(
    product: Callable[[Tensor], Tensor],
    deflation: Deflation,
    theta_k: float,
    which: str,
    tol: float,
    risk: float,
    max_products: int,
    random_vector: Callable[[], Tensor],
    drop: float,
) -> GuardOutcome:
    """One guard chain on B = (I − WWᵀ) H (I − WWᵀ) from a fresh random vector (see the module
    docstring for the verdicts and the bound), in a basis stored as the solve's is and holding
    at most ``deflation.count + max_products + 1`` rows.
    """
    space = deflation.space
    n = space.n
    chain = LanczosBasis(n, deflation.count + max_products + 1, space.device,
                         dtype=space.store.dtype, store_device=space.store.device,
                         layout=space.layout)
    # One deflated row at a time (never all of them at once beside the chain's basis); they
    # are never multiplied, so every product is projected off them.
    for j in range(deflation.columns.shape[1]):
        row = space.vectors(deflation.columns[:, [j]])[0]
        chain.add(row / space.layout.norm(row))
    for row in deflation.ties:
        chain.add(row)
    dim = n - chain.rows
    points = guard_point(theta_k, tol, deflation.slack, which)
    rows: list[int] = []
    nxt = chain.add(random_vector())
    value, miss, vector = float("nan"), 1.0, None
    while nxt is not None and len(rows) < max_products:
        before = chain.rows
        chain.multiply(nxt, product, drop=drop)
        rows.append(nxt)
        nxt = chain.rows - 1 if chain.rows > before else None
        theta, y, c = chain.ritz(rows)
        i = int(order(theta, which)[0])
        value = float(theta[i])
        vector = chain.vectors(y[:, [i]])[0]
        vector = vector / space.layout.norm(vector)
        past = beyond(value, theta_k, which)
        if past > tol * abs(theta_k):
            return GuardOutcome("miss", vector, value, miss, len(rows))
        if abs(past) <= tol * abs(theta_k) and residual_norms(c, y[:, [i]])[0] <= tol * abs(value):
            return GuardOutcome("tie", vector, value, miss, len(rows))
        if nxt is None:  # B's Krylov space from z is exhausted (or B's range is empty)
            return GuardOutcome("clear", None, value, 0.0, len(rows))
        alpha = np.array([chain.m[r, r] for r in rows])
        beta = np.array([chain.m[b, a] for a, b in zip(rows, rows[1:])] + [chain.m[nxt, rows[-1]]])
        miss = miss_probability(alpha, beta, points, theta, dim)
        if miss <= risk:
            return GuardOutcome("clear", None, value, miss, len(rows))
    return GuardOutcome("undecided", vector, value, miss, len(rows))


def miss_probability(
    alpha: np.ndarray, beta: np.ndarray, points: list[tuple[float, int]], ritz: np.ndarray,
    dim: int,
) -> float:
    """√(2·dim/π) / √(Σ_{l=0}^{j} p_l(μ*)²), the worst over `points` ((μ*, direction) pairs);
    1.0 where a point does not lie beyond every Ritz value in `ritz` in its direction (the
    polynomials need not grow past it there).

    Args:
        alpha: the guard's tridiagonal, diagonal ``(j,)``.
        beta: its off-diagonal ``(j,)``, ``beta[-1]`` the norm of its pending remainder (so p_j
            is included).
        points: the ``(μ*, direction)`` pairs, direction +1 above the spectrum, −1 below.
        ritz: the solve's Ritz values.
        dim: the operator's dimension.
    """
    worst = 0.0
    for mu, direction in points:
        extreme = ritz.max() if direction > 0 else ritz.min()
        if direction * (mu - extreme) <= 0:
            return 1.0
        log_sum = _log_christoffel_sum(alpha, beta, mu)
        worst = max(worst, math.sqrt(2 * max(dim, 1) / math.pi) * math.exp(-0.5 * log_sum))
    return min(worst, 1.0)


def _log_christoffel_sum(alpha: np.ndarray, beta: np.ndarray, mu: float) -> float:
    """log Σ_{l=0}^{j} p_l(μ)² by the three-term recurrence, rescaled so nothing overflows."""
    tiny = np.finfo(float).tiny
    prev, cur, total, log_scale = 0.0, 1.0, 1.0, 0.0  # p_{-1} = 0, p_0 = 1
    beta_prev = 0.0
    for a, b in zip(alpha, beta):
        nxt = ((mu - a) * cur - beta_prev * prev) / max(abs(b), tiny)
        prev, cur, beta_prev = cur, nxt, b
        total += cur * cur
        if abs(cur) > 1e100:  # rescale p_{l-1}, p_l and the sum together
            prev, cur, total = prev * 1e-100, cur * 1e-100, total * 1e-200
            log_scale += math.log(1e200)
    return math.log(total) + log_scale
