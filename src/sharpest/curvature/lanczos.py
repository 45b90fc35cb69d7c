"""Thick-restart Lanczos with full reorthogonalisation for the top-k eigenpairs of a symmetric
operator (Wu & Simon, 2000), with a randomised guard against missed eigenvalues.

Why not `scipy.sparse.linalg.eigsh`: ARPACK's implicit restarts spend products rebuilding a
basis of `ncv ≥ 2k+1` vectors every cycle, its stopping test is on a tolerance it does not let
us relate to |λ| per pair, and it cannot be warm-started from several previous eigenvectors.
Here the basis only grows until the k wanted Ritz pairs have small residuals, is restarted
(thick: keeping the best Ritz vectors) only when it would exceed a memory budget, and a start
from the previous eigenvectors converges in a handful of products when they changed little.

The solve has four parts: its start (:meth:`_Solve.start`: a random vector or the normalised
sum of the ``init`` rows), its loop (:meth:`_Solve.step`: one product with the pending row that
carries most of the wanted residuals, Rayleigh–Ritz, a thick restart when the basis is full),
the guard (:mod:`sharpest.curvature.lanczos_guard`, run when the k wanted pairs converge), and
the result (:meth:`_Solve.result`). The bookkeeping of multiplied and pending rows is
:mod:`sharpest.curvature.lanczos_basis`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from sharpest.curvature.adapt import as_operator
from sharpest.curvature.lanczos_basis import LanczosBasis, Layout
from sharpest.curvature.lanczos_guard import (
    GUARD_MAX_PRODUCTS,
    GUARD_RISK,
    GUARD_SHARE,
    MAX_EXTRAS,
    choose_deflation,
    run_guard,
)
from sharpest.curvature.ritz import WHICH, order, residual_norms, thresholds

__all__ = ["WHICH", "EigenResult", "LinearOperator", "lanczos"]


class LinearOperator(Protocol):
    """What `lanczos` needs: a size and a product with a flat vector."""

    size: int

    def matvec(self, vector: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class EigenResult:
    """Eigenpairs of a symmetric operator (plain, immutable data: ``dataclasses.replace`` makes
    a changed copy; :meth:`to_state` / :meth:`from_state` round-trip it through checkpoints).

    Attributes:
        values: (k,) float64, sorted descending — by |λ| for ``which="LM"``, by λ for ``"LA"``;
            ascending by λ for ``"SA"``.
        vectors: (k, size), unit norm, row i pairs with ``values[i]``.
        residuals: (k,) ‖H vᵢ − λᵢ vᵢ‖, from the Lanczos relation (exact up to rounding with
            full reorthogonalisation; no extra product is spent on them).
        n_matvecs: products with the operator that this call made (the guard's included).
        converged: every residual met ``tol·|λᵢ|`` and the guard cleared the result.
        reason: why not converged (empty when converged).
        tie: λ_k has company: further eigenvalues equal to it within ``tol·|λ_k|`` (their
            values in ``tie_values``), so which eigenvector is the k-th is not determined; the
            values are (as a dense solver's would be).
        guard_*: what the guard did (runs, runs that found a missed direction, products, its
            last extreme Ritz value and miss probability, extra Ritz pairs it deflated).
        extra_vectors: (m ≤ k, size) or None: the converged Ritz vectors ranked next after λ_k
            that the guard deflated (:mod:`sharpest.curvature.lanczos_guard`); appended to the next
            solve's ``init`` along a trajectory they converge early again and make its guard
            cheaper.
        chunk_forms: with ``chunk_forms=True``, (C, k) per-chunk quadratic forms vᵢᵀ H_c vᵢ of
            the returned vectors over the operator's C chunks of data, and ``chunk_sizes``
            (C,): what :func:`~sharpest.curvature.sampling_error.weighted_stderr` needs for
            the sampling error of each eigenvalue (no product spent on them).
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
    reason: str = ""
    tie: bool = False
    tie_values: tuple[float, ...] = ()
    guard_runs: int = 0
    guard_misses: int = 0
    guard_matvecs: int = 0
    guard_value: float = float("nan")
    guard_risk: float = float("nan")
    guard_extras: int = 0
    extra_vectors: Tensor | None = field(default=None, repr=False)
    chunk_forms: np.ndarray | None = field(default=None, repr=False)
    chunk_sizes: np.ndarray | None = field(default=None, repr=False)

    @property
    def k(self) -> int:
        return len(self.values)

    def to_state(self, iteration: int | None = None) -> dict[str, Any]:
        """Checkpoint-safe plain data (tensors on the CPU, numbers, strings), loadable with
        ``torch.load(..., weights_only=True)``; ``iteration``: where it was computed.
        """
        return {
            "values": torch.as_tensor(np.asarray(self.values, dtype=np.float64)),
            "vectors": self.vectors.detach().cpu(),
            "residuals": torch.as_tensor(np.asarray(self.residuals, dtype=np.float64)),
            "n_matvecs": int(self.n_matvecs),
            "converged": bool(self.converged),
            "which": str(self.which),
            "seconds": float(self.seconds),
            "iteration": iteration,
            "reason": str(self.reason),
            "tie": bool(self.tie),
            "extra_vectors": (None if self.extra_vectors is None
                              else self.extra_vectors.detach().cpu()),
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
            reason=str(state.get("reason", "")),
            tie=bool(state.get("tie", False)),
            extra_vectors=(None if state.get("extra_vectors") is None
                           else state["extra_vectors"].to(device) if device is not None
                           else state["extra_vectors"]),
        )


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
    max_basis_bytes: float = 4 * 2**30,
    basis_dtype: torch.dtype = torch.float64,
    basis_device: torch.device | str | None = None,
    shard_basis: bool = False,
    guard: bool = True,
    risk: float = GUARD_RISK,
    chunk_forms: bool = False,
) -> EigenResult:
    """Top-k eigenpairs of the symmetric operator `op` by Lanczos.

    Args:
        op: anything with ``size`` and ``matvec(v)`` (e.g. :class:`HessianOperator`), or a scipy
            ``LinearOperator`` / curvlinops operator (``shape`` and ``@``).
        k: number of eigenpairs, ``1 ≤ k < op.size``.
        which: ``"LM"`` largest magnitude (the paper's order), ``"LA"`` largest algebraic,
            ``"SA"`` smallest algebraic.
        tol: a pair is converged when ‖Hx − θx‖ ≤ tol·max(|θ|, ε^(2/3)·‖T‖), T the projected
            matrix; eigenvalues within tol·|λ_k| of λ_k are a tie (``EigenResult.tie``).
        max_matvecs: stop (``converged=False``) after this many products; default
            ``max(100k, 10·max_basis)``.
        init: start vectors ``(m, size)``, e.g. the previous eigenvectors when tracking along
            training. A hint, never a constraint: the Krylov space starts from their normalised
            sum (each row normalised), which holds the wanted eigenvectors to first order when
            they moved little, and the result passes the same guard as a cold start. An
            invariant start space is never accepted as final: it is continued from a fresh
            random direction.
        seed: seed of the random start vector, of the guard's random vectors and of the vectors
            that replace an exhausted Krylov space.
        max_basis: most basis vectors kept before a thick restart; default at most
            ``max(100, 4k)``, and always what ``max_basis_bytes`` allows.
        max_basis_bytes: a promise (default 4 GiB): the solve's basis and the guard's
            together never hold more than this many bytes (rows of ``size`` entries in
            ``basis_dtype``, allocated 8 rows at a time as they are needed; thick restarts
            happen in place). The guard gets up to half of it (at most k + 16 + 100 rows),
            the solve the rest. Too small for ``k`` (it needs 2k + 15 rows with the guard,
            k + 6 without) is a ValueError naming the least that works. Not counted: the k
            returned vectors, one product and float64 temporaries of at most 64 MiB.
        basis_dtype: ``torch.float64`` (default) or ``torch.float32``: how basis rows are
            stored. Inner products are accumulated in float64 either way; float32 rows
            halve the memory and round each row once (eigenvalues agree with a float64
            basis to ~1e-7 relative: ``tests/curvature/test_lanczos_memory.py``).
        basis_device: where basis rows are stored (default the operator's device), e.g.
            ``"cpu"`` for an operator on a GPU: rows then travel to it in 64-MiB slices
            (pinned host memory).
        shard_basis: under ``torch.distributed``, each rank stores only its slice of every
            basis row (about size/world entries), so basis memory per rank (and
            ``max_basis_bytes``) falls as 1/world; inner products are all-reduced and a row
            is gathered whole only to be multiplied. Every rank must call ``lanczos`` with the
            same arguments on an operator that gives every rank the same product (a
            data-parallel :class:`HessianOperator` does); each gets the whole result.
        guard: after the k wanted pairs converge, certify that nothing beyond λ_k was missed
            (:mod:`sharpest.curvature.lanczos_guard`); ``False`` trusts the first converged set
            (a warm start can then return a wrong set marked converged).
        risk: the guard clears a result when the chance that its random start missed an
            eigenvalue beyond λ_k·(1 + tol) is at most ``risk``, a probability over that random
            start (not over the operator). Its products are bounded: one guard chain takes at
            most 100 and the rows ``max_basis_bytes`` leaves it, all guard chains of a solve at
            most half of ``max_matvecs``; a guard that cannot decide ends the solve
            ``converged=False`` with the reason.
        chunk_forms: also return the per-chunk quadratic forms of the eigenvectors
            (``EigenResult.chunk_forms``), kept from the products the solve makes anyway
            (:mod:`sharpest.curvature.lanczos_basis`); needs an operator with
            ``matvec_with_chunk_forms`` (:class:`HessianOperator`, :class:`GGNOperator`).

    Returns:
        EigenResult with float64 values and vectors in the operator's dtype.
    """
    start_time = time.perf_counter()
    op = as_operator(op)  # also scipy LinearOperators, curvlinops: anything with shape and @
    n = int(op.size)
    _check_arguments(n, k, which, tol, risk)
    if basis_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"basis_dtype must be torch.float32 or torch.float64, got {basis_dtype}")
    layout = Layout(n, sharded=shard_basis)
    if chunk_forms and shard_basis:
        raise ValueError("chunk_forms=True needs an unsharded basis (shard_basis=False)")
    plan = _plan_memory(layout.local_n, k, max_basis, max_basis_bytes, basis_dtype, guard)
    max_basis = plan.max_basis
    limit = max_matvecs if max_matvecs is not None else max(100 * k, 10 * max_basis)
    if chunk_forms and not hasattr(op, "matvec_with_chunk_forms"):
        raise TypeError(f"chunk_forms=True needs an operator with matvec_with_chunk_forms "
                        f"(HessianOperator, GGNOperator), got {type(op).__name__}")
    solve = _Solve(op, n, k, which, tol, limit, plan, seed, guard, risk, chunk_forms,
                   basis_dtype, basis_device, layout)
    solve.start(init)
    while solve.step():
        pass
    return solve.result(time.perf_counter() - start_time)


@dataclass(frozen=True)
class _MemoryPlan:
    """How many rows the solve's basis and the guard's may hold (see ``max_basis_bytes``)."""

    max_basis: int  # rows kept before a thick restart
    main_rows: int  # the solve's basis: max_basis + room for its pending rows
    guard_rows: int  # one guard chain with its deflated rows (0 without the guard)


#: Rows the solve's basis holds beyond ``max_basis``: its pending rows before a restart.
_PENDING_ROOM = 4
#: Guard chain products the smallest budget still allows.
_MIN_GUARD_PRODUCTS = 8


def _plan_memory(n: int, k: int, max_basis: int | None, max_bytes: float, dtype: torch.dtype,
                 guard: bool) -> _MemoryPlan:
    """Rows for a basis whose rows hold `n` entries here (a rank's slice when sharded)."""
    row_bytes = n * (4 if dtype == torch.float32 else 8)
    rows = int(max_bytes // row_bytes)
    least_main = min(n, k + 2) + _PENDING_ROOM
    least_guard = k + _MIN_GUARD_PRODUCTS + 1 if guard else 0
    if rows < least_main + least_guard:
        least = least_main + least_guard
        raise ValueError(
            f"max_basis_bytes={max_bytes:.4g} holds {rows} basis vectors of {n:,} "
            f"{str(dtype).replace('torch.', '')} entries; top-{k} needs at least {least} "
            f"({least * row_bytes:,} bytes){' with the guard' if guard else ''}: raise "
            "max_basis_bytes, or store the basis in float32 (basis_dtype=torch.float32)")
    guard_rows = 0
    if guard:
        wanted = k + MAX_EXTRAS + GUARD_MAX_PRODUCTS + 1
        guard_rows = max(least_guard, min(wanted, rows // 2))
    main_rows = rows - guard_rows
    # Past a few times k more basis vectors barely speed convergence; restarts are cheap.
    default = max(100, 4 * k) if max_basis is None else max_basis
    chosen = min(default, main_rows - _PENDING_ROOM, n)
    chosen = max(chosen, min(n, k + 2))
    return _MemoryPlan(max_basis=chosen, main_rows=min(main_rows, chosen + _PENDING_ROOM),
                       guard_rows=guard_rows)


def _check_arguments(n: int, k: Any, which: str, tol: float, risk: float) -> None:
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


class _Solve:
    """One call of :func:`lanczos`: its basis, counters and verdict."""

    def __init__(self, op, n, k, which, tol, limit, plan, seed, guard, risk, chunk_forms,
                 basis_dtype, basis_device, layout) -> None:
        self.op, self.n, self.k, self.which, self.tol = op, n, k, which, tol
        self.limit, self.max_basis, self.guard, self.risk = limit, plan.max_basis, guard, risk
        self.plan = plan
        self.device = torch.device(getattr(op, "device", torch.device("cpu")))
        self.out_dtype = getattr(op, "dtype", torch.float64)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        # All guard chains of a solve together take at most a share of its products; one chain
        # is bounded by its rows (the memory plan).
        self.guard_budget = max(int(GUARD_SHARE * limit), 1)
        self.layout = layout
        self.space = LanczosBasis(n, plan.main_rows, self.device, dtype=basis_dtype,
                                  store_device=basis_device, layout=layout)
        self.n_matvecs = self.restarts = 0
        self.guard_matvecs = self.guard_runs = self.guard_misses = self.guard_extras = 0
        self.guard_value = self.guard_risk = float("nan")
        self.history: list[int] = []
        self.converged = False
        self.reason = ""
        self.scale = np.finfo(float).tiny
        # Tie members found by the guard for the current top-k (deflated by the next guard).
        self.ties: list[Tensor] = []
        self.tie_values: list[float] = []
        # Rows to multiply next, in order, before the usual choice: after a guard found a
        # missed direction, the main chain's pending rows and that direction.
        self.forced: list[int] = []
        self.chunk_forms = chunk_forms
        self.chunk_sizes: np.ndarray | None = None
        self.extra_rows: Tensor | None = None

    # -- start ------------------------------------------------------------------------------

    def random_vector(self) -> Tensor:
        """A Gaussian vector (this rank's slice of it: every rank draws the same one)."""
        full = torch.randn(self.n, generator=self.generator, dtype=torch.float64)
        return self.layout.local(full).to(self.device)

    def start(self, init: Tensor | None) -> None:
        """A random start, or the normalised sum of the normalised ``init`` rows."""
        if init is None:
            self.space.add(self.random_vector())
            return
        init = torch.as_tensor(init)
        if init.dim() == 1:
            init = init.unsqueeze(0)
        if init.dim() != 2 or init.shape[1] != self.n:
            raise ValueError(f"init must have shape (m, {self.n}), got {tuple(init.shape)}")
        rows = self.layout.local(init).to(device=self.device, dtype=torch.float64)
        norms = self.layout.sum((rows * rows).sum(dim=1, keepdim=True)).sqrt()
        if not torch.isfinite(rows).all() or (norms == 0).any():
            raise ValueError("init vectors must be finite and nonzero")
        first = (rows / norms).sum(0)
        first = first / max(self.layout.norm(first), 1e-300)
        if self.space.add(first) is None:
            self.space.add(self.random_vector())

    # -- loop -------------------------------------------------------------------------------

    def product(self, v: Tensor) -> Tensor:
        v = v.to(device=self.device, dtype=self.out_dtype)
        w = self.op.matvec(v).to(device=self.device, dtype=torch.float64)
        if not torch.isfinite(w).all():
            raise FloatingPointError("the operator returned a non-finite product")
        return w

    def main_product(self, v: Tensor) -> Tensor | tuple[Tensor, np.ndarray]:
        """A product of the main chain: with ``chunk_forms``, also its per-chunk projections on
        the basis rows (:meth:`LanczosBasis.multiply` keeps them).
        """
        if not self.chunk_forms:
            return self.product(v)
        rows = self.space.dense_rows()
        v = v.to(device=self.device, dtype=self.out_dtype)
        w, forms, sizes = self.op.matvec_with_chunk_forms(v, rows)
        w = w.to(device=self.device, dtype=torch.float64)
        if not torch.isfinite(w).all():
            raise FloatingPointError("the operator returned a non-finite product")
        self.chunk_sizes = sizes.numpy()
        return w, forms.numpy()

    def step(self) -> bool:
        """One product and its Rayleigh–Ritz (and the guard when the wanted pairs converge);
        False when the solve is over.
        """
        space = self.space
        self.forced = [i for i in self.forced if i in space.pending]
        if self.forced:
            index = self.forced.pop(0)
        elif not space.pending:
            # Exhausted (invariant) Krylov space: it may miss further copies of a repeated
            # eigenvalue or pairs the start had no component along; go on from a fresh direction.
            index = space.add(self.random_vector())
            if index is None:
                return False
        else:
            index = _choose(space, self.which, self.k, self.tol)
        space.multiply(index, self.main_product, drop=1e-12 * self.scale)
        self.n_matvecs += 1
        theta, y, c = space.ritz()
        self.scale = max(float(np.abs(theta).max()), np.finfo(float).tiny)
        self.history.append(self.n_matvecs)
        wanted = order(theta, self.which)[: min(self.k, len(theta))]
        if not self.forced and len(theta) >= self.k and self._wanted_converged(theta, y, c, wanted):
            if len(theta) == self.n:
                self.converged = True  # the whole space: exact
                return False
            if not self.guard:
                if space.pending:
                    self.converged = True
                    return False
                # (Unguarded, an exhausted chain is not trusted: a fresh direction follows.)
            elif not self._guard(theta, y, c, wanted):
                return False
        if self.n_matvecs >= self.limit or len(space.mult) >= self.n:
            self.converged = len(space.mult) >= self.n
            if not self.converged:
                self.reason = f"max_matvecs ({self.limit}) reached"
            return False
        if space.rows >= self.max_basis + 1:
            moved = _thick_restart(space, theta, y, c, self.which, self.k, self.max_basis)
            self.forced = [moved[i] for i in self.forced if i in moved]
            self.restarts += 1
        return True

    def _wanted_converged(self, theta, y, c, wanted) -> bool:
        resid = residual_norms(c, y[:, wanted])
        return bool(np.all(resid <= thresholds(theta[wanted], self.tol, self.scale)))

    # -- guard ------------------------------------------------------------------------------

    def _guard(self, theta, y, c, wanted) -> bool:
        """Guard the converged top-k: False ends the solve (cleared, or undecided), True goes on
        after a missed direction was fed back.
        """
        theta_k = float(theta[wanted[-1]])
        while True:
            deflation = choose_deflation(
                self.space, theta, y, c, wanted, self.which, self.ties,
                max_extras=max(0, min(MAX_EXTRAS, self.plan.guard_rows - self.k
                                      - len(self.ties) - 1 - _MIN_GUARD_PRODUCTS)))
            room = self.plan.guard_rows - deflation.count - 1  # the chain's own rows
            available = min(room, GUARD_MAX_PRODUCTS, self.guard_budget - self.guard_matvecs,
                            self.limit - self.n_matvecs, self.n)
            if available <= 0:
                if room <= 0:
                    self.reason = (f"max_basis_bytes leaves the guard no rows (after "
                                   f"{len(self.ties)} tie members deflated)")
                elif self.n_matvecs >= self.limit:
                    self.reason = f"max_matvecs ({self.limit}) reached during the guard"
                else:
                    self.reason = f"the guard's budget ({self.guard_budget} products) is spent"
                return False
            outcome = run_guard(self.product, deflation, theta_k, self.which, self.tol, self.risk,
                                available, self.random_vector, 1e-12 * self.scale)
            self.guard_runs += 1
            self.guard_matvecs += outcome.products
            self.n_matvecs += outcome.products
            self.guard_value, self.guard_risk = outcome.value, outcome.risk
            self.guard_extras = deflation.extras
            if outcome.verdict == "clear":
                # The nearest k at most: a seed for the next solve, not a second result.
                extras = deflation.columns[:, self.k : self.k + min(deflation.extras, self.k)]
                self.extra_rows = (self.layout.full(self.space.vectors(extras))
                                   if extras.shape[1] else None)
                self.converged = True
                return False
            if outcome.verdict == "tie":
                self.ties.append(outcome.vector)
                self.tie_values.append(outcome.value)
                continue
            if outcome.verdict == "undecided":
                self.reason = (f"the guard was undecided after {outcome.products} products "
                               f"(miss probability {outcome.risk:.2g} > risk {self.risk:g}; "
                               "its chain is bounded by max_basis_bytes and by half of "
                               "max_matvecs)")
                return False
            # A miss: feed it back into the solve: multiply the main chain's pending rows (the
            # entering eigenvector may lie mostly along them) and the guard's Ritz vector, so
            # that the Rayleigh–Ritz of the solve holds it; it is guarded again when it converges.
            self.guard_misses += 1
            self.ties, self.tie_values = [], []
            pending = list(self.space.pending)
            fed = self.space.add(outcome.vector)
            self.forced = pending + ([fed] if fed is not None else [])
            if self.n_matvecs >= self.limit:
                self.reason = f"max_matvecs ({self.limit}) reached"
                return False
            return True

    # -- result -----------------------------------------------------------------------------

    def result(self, seconds: float) -> EigenResult:
        theta, y, c = self.space.ritz()
        best = order(theta, self.which)[: self.k]
        vectors = self.layout.full(self.space.vectors(y[:, best]))
        vectors = vectors / vectors.norm(dim=1, keepdim=True)
        converged = self.converged and len(best) == self.k
        if not converged and not self.reason:
            self.reason = "the Krylov space was exhausted before k pairs converged"
        return EigenResult(
            values=theta[best].astype(np.float64),
            vectors=vectors.to(self.out_dtype),
            residuals=residual_norms(c, y[:, best]),
            n_matvecs=self.n_matvecs,
            converged=converged,
            which=self.which,
            seconds=seconds,
            restarts=self.restarts,
            history=self.history,
            reason="" if converged else self.reason,
            tie=bool(self.tie_values),
            tie_values=tuple(float(v) for v in self.tie_values),
            guard_runs=self.guard_runs,
            guard_misses=self.guard_misses,
            guard_matvecs=self.guard_matvecs,
            guard_value=self.guard_value,
            guard_risk=self.guard_risk,
            guard_extras=self.guard_extras,
            extra_vectors=(self.extra_rows.to(self.out_dtype)
                           if converged and self.extra_rows is not None
                           and len(self.extra_rows) else None),
            chunk_forms=self.space.chunk_forms(y[:, best]),
            chunk_sizes=self.chunk_sizes,
        )


def _choose(space: LanczosBasis, which: str, k: int, tol: float) -> int:
    """The pending row that carries most of the wanted Ritz pairs' residuals (relative to their
    thresholds): with one pending row this is plain Lanczos.
    """
    if len(space.pending) == 1 or not space.mult:
        return space.pending[0]
    theta, y, c = space.ritz()
    wanted = order(theta, which)[: min(k, len(theta))]
    scale = max(float(np.abs(theta).max()), np.finfo(float).tiny)
    weights = (c @ y[:, wanted]) / thresholds(theta[wanted], tol, scale)
    return space.pending[int(np.argmax((weights**2).sum(axis=1)))]


def _thick_restart(space, theta, y, c, which, k, max_basis) -> dict[int, int]:
    """Keep the best Ritz vectors (about half the budget beyond k) and every pending row;
    returns where each pending row went.
    """
    keep = min(len(theta) - 1, max(k + (max_basis - k) // 2, k + 1))
    best = order(theta, which)[:keep]
    return space.restart(theta[best], y[:, best], c)
