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
from sharpest.curvature.lanczos_basis import LanczosBasis

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
    guard_runs: int = 0
    guard_misses: int = 0
    guard_matvecs: int = 0
    guard_value: float = float("nan")
    guard_risk: float = float("nan")

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


def _beyond(value: float, threshold: float, which: str) -> float:
    """How far `value` lies past `threshold` in the order of `which` (positive: it would rank
    before it)."""
    if which == "LM":
        return abs(value) - abs(threshold)
    if which == "LA":
        return value - threshold
    return threshold - value


def _extreme(theta: np.ndarray, which: str) -> int:
    """Index of the Ritz value that ranks first for `which`."""
    return int(_order(theta, which)[0])


GUARD_MAX_PRODUCTS = 40
GUARD_RISK = 1e-3
START_MIX = 0.0


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
    guard: bool = True,
    risk: float = GUARD_RISK,
    start: str = "sum",
    mix: float = START_MIX,
    oversample: int = 1,
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
        training. A hint, never a constraint: the Krylov space starts from their normalised sum
        (each row normalised), which holds the wanted eigenvectors to first order when they
        moved little, and the result passes the same guard as a cold start. An invariant start
        space is never accepted as final: it is continued from a fresh random direction.
        A warm start pays only when the basis moved little (``benchmarks/warm_start.py``:
        0.56–0.65× a cold start when the top-5 turned by 0.9°, 0.75–0.96× at 79°).
    seed: seed of the random start vector (and of the vectors that replace an exhausted
        Krylov space).
    max_basis: most basis vectors kept before a thick restart; default from
        ``max_basis_bytes`` (basis stored in float64 on the operator's device, allocated as it
        grows) and at most ``max(100, 4k)``; at least ``k + 8`` and at most ``size``.
    guard: after the k wanted pairs converge, check that nothing beyond λ_k was missed (below);
        ``False`` restores the unguarded solver (a wrong set can then be claimed converged).
    start, mix, oversample: the alternatives measured against the guard (kept for
        ``benchmarks/lanczos_guard.py``): ``start="block"`` starts a band Lanczos from the init
        rows and ``oversample`` random vectors; ``mix`` adds that fraction of a random unit
        vector to the summed start. Defaults: the summed start, no mix.
    risk: the guard stops when the chance that its random start missed a direction beyond
        λ_k is at most ``risk`` (default 1e-3).

    The guard
    ---------
    Lanczos from one start vector cannot see a direction the start has no component along: a
    warm start from the previous top-k misses an eigenvector that has just entered the top-k
    (issue 12: 7 of 40 tracked solves, and 5 of 5 jumps, wrong but ``converged=True``), and even
    a cold start misses λ_k when λ_{k+1} is within ~1e-3 of it (2 of 20 solves). So, once the
    k wanted Ritz pairs (θᵢ, xᵢ) meet ``tol``, a guard chain starts from a fresh random vector z
    orthogonalised against the k Ritz vectors V = [x₁ … x_k] only: a separate small Lanczos on
    the deflated operator B = (I − VVᵀ) H (I − VVᵀ), whose range is everything the solve has
    not confirmed (including the main chain's next direction, where an entering eigenvector can
    hide). After j guard products:

    - if an extreme Ritz value of the guard chain lies beyond θ_k (by more than tol·|θ_k|, in
      the order of ``which``; both ends for "LM"), a direction was missed: it is fed back into
      the solve, which multiplies its pending rows and then that Ritz vector (so its
      Rayleigh–Ritz holds it), goes on, and is guarded again when it converges;
    - else the chance that the guard missed it is bounded a posteriori. The j-th guard vector is
      q_{j+1} = p_j(B) z with p_j(μ) = det(μ − T_j)/(β_1⋯β_j), so for an eigenpair (μ, u) of B,
      |uᵀz| ≤ 1/|p_j(μ)|, and beyond the guard's Ritz values |p_j| is smallest at μ = θ_k.
      For z uniform on the sphere of B's range (dimension n' = n − k),
      P(|uᵀz| ≤ ε) ≤ ε·√(2n'/π).
      The guard accepts when √(2n'/π)/maxⱼ|p_j(θ_k)| ≤ ``risk``. This is a probability over
      the guard's random start, not over the operator: no Krylov method can do better, and
      every guard's outcome is recorded (``guard_runs``, ``guard_misses``, ``guard_matvecs``,
      ``guard_value`` = the guard's extreme Ritz value, ``guard_risk`` = the bound reached).

    The guard's products do not enter the solve's Rayleigh–Ritz (its vectors are orthogonal to
    V, not to the solve's basis); that is its price. A guard that has not decided after 40
    products makes no claim (its extreme Ritz vector is fed back and the solve goes on);
    ``max_matvecs`` can end a solve in the middle of a guard, which then returns
    ``converged=False``.

    Chosen by measurement (``benchmarks/lanczos_guard.py``: n = 300 drifting sequences with an
    eigenvalue rising from 1 to 12 through the top 5, 2 seeds × 40 solves, tol 1e-4, "LM"):
    cold starts 18.0 products (none wrong); unguarded warm starts 12.4 products, 6 of 80 solves
    wrong and claimed converged; (a) 0.1 of a random unit vector mixed into the start 14.7
    products, 2 of 80 wrong: mixing reduces but does not remove the failure; (c) a guard
    deflated against the whole basis (the guard's chain continued in the solve's basis): 19.3
    products, 2 of 80 wrong; deflated against the k pairs and the main chain's pending row:
    20.3 products (7.7 guard), 1 of 80 wrong, the solve where the riser had just passed λ5
    (6.08 against 6), its eigenvector mostly along that pending row, which the guard could not
    see. The current guard (orthogonal to the k pairs only, a separate chain): 0 of 80 wrong,
    20.8 products (8.1 guard); cold starts with it 25.9 (7.9 guard), the same as before
    (4 seeds × 40 solves: 1 of 160 wrong before, 0 of 160 after; 20.4 → 20.7 products warm,
    25.7 cold both).
    The remaining risk is the one the bound states (≤ ``risk`` per guard, over its random
    start).

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
    if not 0 < risk < 1:
        raise ValueError(f"risk must lie in (0, 1), got {risk}")
    device = getattr(op, "device", torch.device("cpu"))
    out_dtype = getattr(op, "dtype", torch.float64)

    if max_basis is None:
        # Past a few times k more basis vectors barely speed convergence; restarts are cheap.
        max_basis = min(int(max_basis_bytes // (8 * n)), max(100, 4 * k))
    max_basis = min(n, max(max_basis, k + 8, 2 * k))
    limit = max_matvecs if max_matvecs is not None else max(100 * k, 10 * max_basis)
    guard_max = min(GUARD_MAX_PRODUCTS, n)

    generator = torch.Generator(device="cpu").manual_seed(seed)

    def random_vector() -> Tensor:
        return torch.randn(n, generator=generator, dtype=torch.float64).to(device)

    space = LanczosBasis(n, max_basis + guard_max + 2, device)
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
        rows = rows / norms
        if start == "block":
            for row in rows:
                space.add(row)
            for _ in range(oversample):
                space.add(random_vector())
        else:
            first = rows.sum(0)
            first = first / max(float(first.norm()), 1e-300)
            noise = random_vector()
            first = first + mix * noise / noise.norm()
            if space.add(first) is None:
                space.add(noise)
    else:
        space.add(random_vector())

    def product(v: Tensor) -> Tensor:
        w = op.matvec(v.to(out_dtype)).to(device=device, dtype=torch.float64)
        if not torch.isfinite(w).all():
            raise FloatingPointError("the operator returned a non-finite product")
        return w

    n_matvecs = restarts = 0
    guard_matvecs = guard_runs = guard_misses = 0
    guard_value = guard_risk = float("nan")
    history: list[int] = []
    converged = False
    scale = np.finfo(float).tiny
    # Rows to multiply next, in order, before the usual choice: after a guard found something
    # beyond λ_k, the main chain's pending rows and the guard's Ritz vector.
    forced: list[int] = []

    while True:
        forced = [i for i in forced if i in space.pending]
        if forced:
            index = forced.pop(0)
        elif not space.pending:
            # Exhausted (invariant) Krylov space: it may miss further copies of a repeated
            # eigenvalue or pairs the start had no component along; go on from a fresh direction.
            index = space.add(random_vector())
            if index is None:
                break
        else:
            index = _choose(space, which, k, tol)
        space.multiply(index, product, drop=1e-12 * scale)
        n_matvecs += 1
        theta, y, c = space.ritz()
        scale = max(float(np.abs(theta).max()), np.finfo(float).tiny)
        history.append(n_matvecs)

        wanted = _order(theta, which)[: min(k, len(theta))]
        if not forced and len(theta) >= k and _converged(theta, y, c, wanted, tol, scale):
            if len(theta) == n:
                converged = True  # the whole space: exact
                break
            if not guard:
                if space.pending:
                    converged = True
                    break
                # (Unguarded, an exhausted chain is not trusted: a fresh direction follows.)
            elif n_matvecs < limit:
                found = space.vectors(y[:, wanted])
                found = found / found.norm(dim=1, keepdim=True)
                outcome = _run_guard(
                    product, found, float(theta[wanted[-1]]), which, tol, risk, n,
                    min(guard_max, limit - n_matvecs), random_vector, device, 1e-12 * scale)
                guard_runs += 1
                guard_matvecs += outcome.products
                n_matvecs += outcome.products
                guard_value, guard_risk = outcome.value, outcome.risk
                if outcome.verdict == "clear":
                    converged = True
                    break
                guard_misses += outcome.verdict == "miss"
                if n_matvecs >= limit:
                    break  # max_matvecs ended the guard undecided: no claim
                # Feed what the guard saw back into the solve: multiply the main chain's
                # pending rows (the entering eigenvector may lie mostly along them) and the
                # guard's extreme Ritz vector, so that the Rayleigh–Ritz of the solve holds it.
                # An undecided guard is fed back too; the solve is guarded again later.
                pending = list(space.pending)
                fed = space.add(outcome.vector) if outcome.vector is not None else None
                forced = pending + ([fed] if fed is not None else [])
        if n_matvecs >= limit or len(space.mult) >= n:
            converged = len(space.mult) >= n
            break
        if not forced and space.rows >= max_basis + 1:
            _thick_restart(space, theta, y, c, which, k, max_basis)
            restarts += 1

    theta, y, c = space.ritz()
    order = _order(theta, which)[:k]
    vectors = space.vectors(y[:, order])
    vectors = vectors / vectors.norm(dim=1, keepdim=True)
    residuals = np.linalg.norm(c @ y[:, order], axis=0) if len(c) else np.zeros(len(order))
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
        guard_runs=guard_runs,
        guard_misses=guard_misses,
        guard_matvecs=guard_matvecs,
        guard_value=guard_value,
        guard_risk=guard_risk,
    )


@dataclass
class _GuardOutcome:
    verdict: str  # "clear", "miss" (a value beyond λ_k), "undecided" (out of products)
    vector: Tensor | None  # the guard's extreme Ritz vector (unit), to feed back
    value: float
    risk: float
    products: int


def _run_guard(
    product, found: Tensor, bound: float, which: str, tol: float, risk: float, n: int,
    max_products: int, random_vector, device: torch.device, drop: float,
) -> _GuardOutcome:
    """Lanczos from a random start on B = (I − VVᵀ) H (I − VVᵀ), V the k converged Ritz
    vectors `found` (and nothing else: an entering eigenvector can hide in any other direction
    of the solve's basis). Stops when an extreme Ritz value of B lies beyond `bound` (a miss),
    when the chance of a miss is at most `risk` (clear), after `max_products` products
    (undecided)."""
    k = found.shape[0]
    chain = LanczosBasis(n, k + max_products + 2, device)
    for row in found:
        chain.add(row)  # never multiplied: every product is projected off them
    fixed = chain.rows
    rows: list[int] = []
    nxt = chain.add(random_vector())
    value = miss = float("nan")
    vector = None
    while nxt is not None and len(rows) < max_products:
        before = chain.rows
        chain.multiply(nxt, product, drop=drop)
        rows.append(nxt)
        nxt = chain.rows - 1 if chain.rows > before else None
        theta, y, _ = chain.ritz(rows)
        i = _extreme(theta, which)
        value = float(theta[i])
        vector = chain.vectors(y[:, [i]])[0]
        betas = [chain.m[b, a] for a, b in zip(rows, rows[1:])]
        betas.append(chain.m[nxt, rows[-1]] if nxt is not None else 0.0)
        miss = _miss_probability(chain.m, rows, betas, bound, which, n - fixed)
        if _beyond(value, bound, which) > tol * abs(bound):
            return _GuardOutcome("miss", vector / vector.norm(), value, miss, len(rows))
        if miss <= risk:
            return _GuardOutcome("clear", None, value, miss, len(rows))
    if nxt is None:  # B's Krylov space from z is exhausted (or B's range is empty)
        return _GuardOutcome("clear", None, value, 0.0, len(rows))
    if vector is not None:
        vector = vector / vector.norm()
    return _GuardOutcome("undecided", vector, value, miss, len(rows))


def _miss_probability(
    m: np.ndarray, rows: list[int], betas: list[float], bound: float, which: str, dim: int
) -> float:
    """Bound on the chance that the guard's random start z missed an eigenvector u of the
    deflated operator whose eigenvalue μ lies beyond `bound`.

    The guard's j-th Lanczos vector is q_{j+1} = p_j(B) z with p_j(x) = det(x − T_j)/(β_1⋯β_j),
    so uᵀq_{j+1} = p_j(μ)·uᵀz and |uᵀz| ≤ 1/|p_j(μ)|. Beyond the guard's Ritz values |p_j|
    grows with |μ − bound|, so μ = bound is the worst case. For z uniform on the unit sphere of
    the `dim`-dimensional range of B, P(|uᵀz| ≤ ε) ≤ ε·√(2·dim/π).
    """
    targets = [abs(bound), -abs(bound)] if which == "LM" else [bound]
    t = m[np.ix_(rows, rows)]
    t = 0.5 * (t + t.T)
    log_beta = np.cumsum(np.log(np.maximum(np.abs(betas), np.finfo(float).tiny)))
    worst = 0.0
    for mu in targets:
        best = 0.0  # the largest log|p_j(μ)| over j
        for j in range(1, len(rows) + 1):
            ritz = np.linalg.eigvalsh(t[:j, :j])
            if betas[j - 1] == 0.0:
                return 0.0  # an invariant Krylov space: no component beyond it exists
            best = max(best, float(np.sum(np.log(np.abs(mu - ritz) + 1e-300)) - log_beta[j - 1]))
        worst = max(worst, math.sqrt(2 * max(dim, 1) / math.pi) * math.exp(-best))
    return min(worst, 1.0)


def _thresholds(theta: np.ndarray, wanted: np.ndarray, tol: float, scale: float) -> np.ndarray:
    floor = np.finfo(np.float64).eps ** (2 / 3) * scale
    return tol * np.maximum(np.abs(theta[wanted]), floor)


def _converged(theta, y, c, wanted, tol, scale) -> bool:
    resid = np.linalg.norm(c @ y[:, wanted], axis=0) if len(c) else np.zeros(len(wanted))
    return bool(np.all(resid <= _thresholds(theta, wanted, tol, scale)))


def _choose(space: LanczosBasis, which: str, k: int, tol: float) -> int:
    """The pending row that carries most of the wanted Ritz pairs' residuals (relative to their
    thresholds): with one pending row this is plain Lanczos."""
    if len(space.pending) == 1 or not space.mult:
        return space.pending[0]
    theta, y, c = space.ritz()
    wanted = _order(theta, which)[: min(k, len(theta))]
    scale = max(float(np.abs(theta).max()), np.finfo(float).tiny)
    weights = (c @ y[:, wanted]) / _thresholds(theta, wanted, tol, scale)
    return space.pending[int(np.argmax((weights**2).sum(axis=1)))]


def _thick_restart(space, theta, y, c, which, k, max_basis) -> None:
    """Keep the best Ritz vectors (about half the budget beyond k) and every pending row."""
    keep = min(len(theta) - 1, max(k + (max_basis - k) // 2, k + 1))
    order = _order(theta, which)[:keep]
    space.restart(theta[order], y[:, order], c)
