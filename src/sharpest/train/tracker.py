"""``EigenTracker``: the top-k Hessian eigenpairs along training, as a callback or by hand.

At each tracking point it runs :func:`sharpest.curvature.lanczos` on the Hessian of the loss on
a fixed, non-augmented subset of the training set (``(wd/2)‖θ‖²`` included), warm-started from
the previous eigenvectors, and records an ``"eigen"`` line: ``eigenvalues`` (as Lanczos sorts
them: descending |λ| for ``which="LM"``), ``residuals``, ``n_matvecs`` (all products, of which
``guard_matvecs`` were the guard's: see :func:`~sharpest.curvature.lanczos`), ``subset_size``,
``seconds``, ``converged``, ``warm`` and, from the second point on, the principal ``angles``
(radians, ascending) between the previous and the new top-k bases and their maximum
``angle_max``. ``frobenius_topk`` is √Σλᵢ², the paper's ‖H‖_F estimate. ``layer_shares``
(``{tensor name: [share of e₁, …, share of e_k]}``, :mod:`sharpest.curvature.shares`) says which
parameter tensors each eigenvector lives in. With ``operator="ggn"`` or ``"fisher"`` the
Gauss-Newton or empirical Fisher is tracked instead of the Hessian (the line says
``"operator"``).

When tracking points come (iteration ``t`` counts optimizer steps done):

- every ``every`` iterations (``t % every == 0``, so ``t = 0`` too), if ``every > 0``;
  with ``every="auto"`` where λ₁ moves (:class:`~sharpest.train.adaptive.AdaptiveCadence`);
- every ``dense_every`` iterations while ``t < dense_until`` (dense, then sparse);
- at each epoch start if ``epoch_start`` (the paper's schedule, ``every = 0``);
- once at the end of training if ``at_end`` and the last iteration was not tracked;
- whenever the optimizer's eigenbasis is due for a refresh (below).

If the optimizer has ``set_basis`` (NudgedSGD and the Sec. 3.3 variants) the tracker refreshes
it at each epoch start (``refresh_every = 0``, the paper) or every ``refresh_every`` iterations,
with the leading rows of the eigenvectors of that iteration, sorted by ``order`` (``"magnitude"``:
descending |λ|, the paper; ``"algebraic"``: descending λ, the authors' code; see
:mod:`sharpest.optim.order`); the line then has ``"refreshed": true``. With
``basis_from="preconditioned"`` (and ``precondition="optimizer"``, ``precondition_k ≥`` the
optimizer's k) the basis is instead the top right eigenvectors xᵢ = P^(-1/2)wᵢ of P⁻¹H from that
point's preconditioned solve (largest first, orthonormalised by the optimizer), P the nudged
adaptive optimizer's own diagonal; H's until P exists and that solve converged (``"basis"`` on
the line says which).

A loop that never calls :meth:`EigenTracker.start_epoch` (only :meth:`~EigenTracker.step`) has
no epoch starts: the basis is then refreshed at every tracking
point of ``step``, and computed at the first ``step`` call if the optimizer has none yet, so no
step runs as plain SGD unnoticed; with no tracking point that ``step`` could reach (``every = 0``,
no ``dense_until``, no ``refresh_every``) the first call raises, naming the missing policy.

A point whose Lanczos run did not converge (``"converged": false``, e.g. it hit
``max_matvecs``) is never used silently: the tracker prints one ``warning: ...`` line, and
unless ``use_unconverged`` the optimizer keeps its previous basis (the line has
``"refreshed": false, "refresh_skipped": "not converged"``). The point still warm-starts the
next one (a start is only a hint) and is still recorded, so readers can mark or skip it.

With ``stderr=True`` the line also has ``eigenvalues_stderr``: the sampling error of each λᵢ
over the Hessian subset (:mod:`sharpest.curvature.sampling_error`), from the per-chunk
quadratic forms Lanczos keeps from its own products (no extra product; the subset is split
into at least ``MIN_CHUNKS`` chunks).

Optimizer-aware fields (:mod:`sharpest.train.optimizer_curvature`): ``stability_threshold``
(the optimizer's line, :func:`sharpest.curvature.stability_threshold`) on every line when the
optimizer has one; with ``precondition="optimizer"`` the top eigenvalues of P⁻¹H
(``preconditioned``); with ``batch_sharpness=N`` batch sharpness over N minibatches of
``batch_size`` and the sharpness along the last update; with ``overlap`` the gradient's, the
minibatch gradients' and the update's share of the top-k subspace. Each with its cost in
products on the line (``*_matvecs``).

With ``subset_min`` set (``track.subset: auto``) the data given to :meth:`attach` is a pool
and the Hessian subset is its prefix, grown in whole chunks until ``stderr(λ₁)/|λ₁| ≤
rel_stderr`` (:class:`~sharpest.train.adaptive.AdaptiveSubset`); the line then also has
``lambda1_rel_stderr`` (stderr(λ₁)/|λ₁| at the size used), ``subset_solves``
(``[[size, products], …]``, one per solve of that point), ``growth_matvecs`` (the products of
all but the last solve; ``n_matvecs`` counts every solve) and, when the pool ran out before
the target was met, ``subset_note``. With ``every="auto"`` it has ``cadence`` (``"denser"``,
``"sparser"``, ``"keep"``) and ``next_point``.
Both adaptive modes record ``eigenvalues_stderr`` (it is free).

Records go to ``log(event, **fields)`` with ``iteration`` and ``epoch`` among the fields; a
callable taking one argument (``records.append``) gets the whole record as a dict
``{"event": ..., "iteration": ..., "epoch": ..., ...}``; with no ``log`` they are kept in
``tracker.records``.

In a hand-written loop (every 5 steps, driving Nudged SGD's basis):

>>> import torch
>>> from torch import nn
>>> from sharpest.optim import NudgedSGD
>>> _ = torch.manual_seed(0)
>>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
>>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
>>> loss_fn = nn.CrossEntropyLoss()
>>> optimizer = NudgedSGD(model.parameters(), lr=0.1, gamma=0.5, k=2)
>>> records = []
>>> tracker = EigenTracker(k=2, every=5).attach(
...     model, loss_fn, (x[:32], y[:32]), optimizer=optimizer, log=records.append)
>>> for t in range(12):
...     _ = tracker.step(t)          # computes when due; returns the EigenResult or None
...     optimizer.zero_grad()
...     loss_fn(model(x), y).backward()
...     optimizer.step()
>>> _ = tracker.finish(12)          # one last point at the end
>>> [(r["iteration"], r.get("refreshed", False)) for r in records]
[(0, True), (5, True), (10, True), (12, False)]
>>> optimizer.basis_version
3
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from sharpest.config import DEFAULT_CHUNK_SIZE
from sharpest.curvature import EigenResult, HessianOperator, lanczos, principal_angles
from sharpest.curvature.ggn import build_operator
from sharpest.curvature.sampling_error import (
    MIN_CHUNKS,
    stderr_chunk_size,
    weighted_stderr,
)
from sharpest.curvature.shares import operator_layer_shares
from sharpest.curvature.spectra import frobenius_from_topk
from sharpest.optim.order import BASIS_ORDERS, algebraic_top_is_exact, basis_order
from sharpest.train.adaptive import AdaptiveCadence, AdaptiveSubset, relative_stderr
from sharpest.train.callbacks import Callback
from sharpest.train.event_log import as_event_log
from sharpest.train.optimizer_curvature import OptimizerCurvature

if TYPE_CHECKING:
    from sharpest.config import Config
    from sharpest.train.callbacks import TrainerView

__all__ = ["EigenTracker", "eigen_from_state", "eigen_state"]


def eigen_state(result: EigenResult, iteration: int | None = None) -> dict[str, Any]:
    """An :class:`EigenResult` as checkpoint-safe plain data (:meth:`EigenResult.to_state`)."""
    return result.to_state(iteration)


def eigen_from_state(
    state: dict[str, Any], device: torch.device | str | None = None
) -> EigenResult:
    """Inverse of :func:`eigen_state` (:meth:`EigenResult.from_state`)."""
    return EigenResult.from_state(state, device)


class EigenTracker(Callback):
    """Top-k Hessian eigenvalues along training (see the module docstring)."""

    name = "eigen"

    def __init__(
        self,
        k: int = 10,
        every: int | str = 100,
        *,
        epoch_start: bool | None = None,
        at_end: bool = True,
        dense_until: int = 0,
        dense_every: int = 1,
        warm_start: bool = True,
        tol: float = 1e-4,
        which: str = "LM",
        max_matvecs: int | None = None,
        chunk_size: int | None = None,
        seed: int = 0,
        refresh_every: int = 0,
        order: str = "magnitude",
        use_unconverged: bool = False,
        stderr: bool = False,
        operator: str = "hessian",
        layer_shares: bool = True,
        precondition: str = "none",
        batch_sharpness: int = 0,
        overlap: bool = False,
        batch_size: int | None = None,
        precondition_k: int = 1,
        subset_min: int | None = None,
        rel_stderr: float = 0.05,
        every_min: int = 1,
        every_max: int = 100,
        budget_per_epoch: int | None = None,
        iterations_per_epoch: int | None = None,
        basis_from: str = "hessian",
    ) -> None:
        if not 1 <= k <= 30:
            raise ValueError(f"k must be in [1, 30], got {k}")
        # every="auto": the adaptive cadence (sharpest.train.adaptive); its own gaps, no modulus.
        self.cadence = self._make_cadence(every, every_min, every_max, budget_per_epoch,
                                          iterations_per_epoch)
        if self.cadence is not None:
            every = 0
        if every < 0 or dense_until < 0 or dense_every < 1 or refresh_every < 0:
            raise ValueError("every, dense_until, refresh_every must be ≥ 0 and dense_every ≥ 1")
        if order not in BASIS_ORDERS:
            raise ValueError(f"order must be one of {', '.join(BASIS_ORDERS)}; got {order!r}")
        if basis_from not in ("hessian", "preconditioned") or (
                basis_from == "preconditioned" and precondition != "optimizer"):
            raise ValueError(f"basis_from must be 'hessian' or 'preconditioned' (with "
                             f"precondition='optimizer'); got {basis_from!r}")
        #: Where the optimizer's basis comes from: H's top k, or P⁻¹H's (right eigenvectors).
        self.basis_from = basis_from
        self.k = k
        self.every = every
        self.epoch_start = (
            (every == 0 and self.cadence is None) if epoch_start is None else bool(epoch_start)
        )
        self.at_end = at_end
        self.dense_until = dense_until
        self.dense_every = dense_every
        self.warm_start = warm_start
        self.tol = tol
        self.which = which
        self.max_matvecs = max_matvecs
        self.chunk_size = chunk_size or DEFAULT_CHUNK_SIZE
        self.seed = seed
        self.refresh_every = refresh_every
        self.order = order
        self.use_unconverged = bool(use_unconverged)
        # Subset auto (``subset_min`` set): the attached data is a pool grown along.
        self.subset_min = subset_min
        self.rel_stderr = rel_stderr
        self.pool: Any = None  # the pool when it differs from the attached data (build())
        self.subset: AdaptiveSubset | None = None
        self._subset_state: dict[str, Any] | None = None
        self._operator_args: tuple[Any, ...] = ()
        # Both adaptive modes decide from the stderr, which is free (chunk forms).
        self.stderr = bool(stderr) or self.adaptive
        #: Print warning lines (the trainer turns it off on ranks other than 0).
        self.verbose = True
        self._warned_order = False
        # "hessian" | "ggn" | "fisher" (sharpest.curvature.build_operator).
        self.operator_kind = operator
        self.layer_shares = layer_shares
        # Attached objects (attach() or on_train_start).
        self.model: nn.Module | None = None
        self.operator: HessianOperator | None = None
        self.optimizer: Any = None
        self._log: Callable[..., Any] | None = None
        self._epoch_starts = False
        # State (checkpointed).
        self.result: EigenResult | None = None
        self.last_iteration: int | None = None
        self.points = 0
        self.records: list[dict[str, Any]] = []
        # Optimizer-aware fields (train.optimizer_curvature): preconditioned sharpness, batch and
        # update sharpness, top-subspace shares, the stability threshold.
        self.extras = OptimizerCurvature(
            precondition, batch_sharpness, overlap, batch_size, precondition_k, seed
        )

    @classmethod
    def from_config(cls, config: Config) -> EigenTracker:
        t = config.track
        return cls(
            k=t.k,
            every=t.every,
            epoch_start=t.epoch_start,
            at_end=t.at_end,
            dense_until=t.dense_until,
            dense_every=t.dense_every,
            warm_start=t.warm_start,
            tol=t.tol,
            which=t.which,
            max_matvecs=t.max_matvecs,
            chunk_size=t.chunk_size,
            seed=config.seed if t.seed is None else t.seed,
            refresh_every=config.optimizer.refresh_every,
            order=config.optimizer.order,
            use_unconverged=t.use_unconverged,
            stderr=t.stderr,
            operator=t.operator,
            layer_shares=t.layer_shares,
            precondition=t.precondition,
            batch_sharpness=t.batch_sharpness,
            overlap=t.overlap,
            batch_size=config.batch_size,
            precondition_k=t.precondition_k,
            subset_min=t.subset_min if t.subset == "auto" else None,
            rel_stderr=t.rel_stderr,
            every_min=t.every_min,
            every_max=t.every_max,
            budget_per_epoch=t.budget_per_epoch,
            basis_from=config.optimizer.nudge_basis,
        )

    @staticmethod
    def _make_cadence(every: int | str, every_min: int, every_max: int,
                      budget: int | None, ipe: int | None) -> AdaptiveCadence | None:
        if isinstance(every, str):
            if every != "auto":
                raise ValueError(f"every must be an integer ≥ 0 or 'auto', got {every!r}")
            return AdaptiveCadence(every_min, every_max, budget, ipe)
        return None

    @property
    def adaptive(self) -> bool:
        """Whether the cadence or the subset adapts (``auto``)."""
        return self.cadence is not None or self.subset_min is not None

    # -- setup ---------------------------------------------------------------------------------

    def attach(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Tensor], Tensor] | None,
        data: Any,
        weight_decay: float = 0.0,
        optimizer: Any = None,
        log: Callable[..., Any] | None = None,
        *,
        train_data: Any = None,
        measured_optimizer: Any = None,
        **operator_options: Any,
    ) -> EigenTracker:
        """Bind the model, the loss, the fixed Hessian data and, optionally, the optimizer.

        Args:
            model: the network.
            loss_fn: ``loss_fn(outputs, targets)``; ``None``: the model's own loss from the labels
                (:mod:`sharpest.curvature.own_loss`).
            data: the fixed Hessian data: one ``(inputs, targets)`` pair or a list of them.
            weight_decay: λ of the ``(wd/2)‖θ‖²`` term (``decay_params=`` in
                ``operator_options`` restricts it to those parameters).
            optimizer: an optimizer with ``set_basis`` to refresh.
            log: ``log(event, **fields)`` (default: append the record to ``self.records``).
            train_data: where batch sharpness draws its minibatches: an ``(inputs, targets)`` pair
                or a list of batches (default ``data``).
            measured_optimizer: the optimizer whose threshold, preconditioner and updates are
                measured, whether or not it has ``set_basis``
                (:mod:`sharpest.train.optimizer_curvature`; default ``optimizer``).
            **operator_options: passed to :class:`HessianOperator` (e.g. ``reduction="sum"``,
                ``semantics="train"``).

        Returns:
            The tracker itself.
        """
        self.model = model
        if self.subset_min is not None:
            self._attach_subset(model, loss_fn, data, weight_decay, operator_options)
        else:
            self.operator = build_operator(
                self.operator_kind, model, loss_fn, data, weight_decay,
                chunk_size=self.chunk_size, cache_graphs="auto", **operator_options,
            )
        n = self.operator.num_examples
        few = len(self.operator.chunks) < MIN_CHUNKS and n >= MIN_CHUNKS
        if self.subset is None and self.stderr and few:
            # The standard error needs several chunks (its degrees of freedom).
            self.operator = build_operator(
                self.operator_kind, model, loss_fn, data, weight_decay,
                chunk_size=stderr_chunk_size(n, self.chunk_size), cache_graphs="auto",
                **operator_options,
            )
        self.optimizer = optimizer if callable(getattr(optimizer, "set_basis", None)) else None
        self._attach_extras(model, loss_fn, data, weight_decay, operator_options,
                            optimizer if measured_optimizer is None else measured_optimizer,
                            train_data)  # fmt: skip
        self._log = as_event_log(log)
        self._epoch_starts = False  # until start_epoch() or a trainer says epochs are signalled
        return self

    def _attach_extras(self, model: nn.Module, loss_fn: Callable[[Any, Tensor], Tensor],
                       data: Any, weight_decay: float, operator_options: dict[str, Any],
                       optimizer: Any, train_data: Any) -> None:  # fmt: skip
        """Bind :class:`~sharpest.train.optimizer_curvature.OptimizerCurvature` (the
        optimizer-aware fields) to this tracker's operator, optimizer and training data.
        """
        self.extras.attach(self.operator, model, loss_fn, weight_decay, operator_options,
                           optimizer, data if train_data is None else train_data)  # fmt: skip
    def _attach_subset(self, model: nn.Module, loss_fn: Any, data: Any, weight_decay: float,
                       options: dict[str, Any]) -> None:
        """Subset auto: the pool (``self.pool``, else ``data`` in its order) and its prefix."""
        pool = self.pool if self.pool is not None else data
        if isinstance(pool, list):
            raise ValueError("subset auto: give the pool as one (inputs, targets) pair")
        self.subset = AdaptiveSubset(pool, int(self.subset_min or 0), self.chunk_size,
                                     self.rel_stderr)
        if self._subset_state is not None:  # a checkpoint loaded before attach (the Trainer)
            self.subset.load_state_dict(self._subset_state)
            self._subset_state = None
        self._operator_args = (model, loss_fn, weight_decay, options)
        self._build_subset_operator()

    def _build_subset_operator(self) -> None:
        assert self.subset is not None
        model, loss_fn, weight_decay, options = self._operator_args
        self.operator = build_operator(
            self.operator_kind, model, loss_fn, self.subset.batches(), weight_decay,
            chunk_size=self.chunk_size, cache_graphs="auto", **options,
        )
        if getattr(self.extras, "operator", None) is not None:
            self.extras.operator = self.operator  # the optimizer-aware fields use the grown subset

    @property
    def subset_size(self) -> int:
        return 0 if self.operator is None else self.operator.num_examples

    # -- schedule ------------------------------------------------------------------------------

    def is_due(self, iteration: int) -> bool:
        """Whether ``iteration`` is a tracking point of the periodic or dense schedule."""
        if self.every > 0 and iteration % self.every == 0:
            return True
        if self.cadence is not None and self.cadence.is_due(iteration):
            return True
        if iteration < self.dense_until and iteration % self.dense_every == 0:
            return True
        return (
            self.refresh_every > 0
            and self.optimizer is not None
            and (iteration % self.refresh_every == 0)
        )

    def _refresh_due(self, iteration: int, at_epoch_start: bool) -> bool:
        if self.optimizer is None:
            return False
        if self.refresh_every == 0:
            return at_epoch_start
        return iteration % self.refresh_every == 0

    def _refresh_in_step(self, iteration: int) -> bool:
        """Whether ``step(iteration)`` must refresh the basis although its policy says not:
        the optimizer has none yet, or the epoch-start policy applies but no epoch start is
        ever signalled (a loop calling only ``step``), so refresh at each tracking point.
        """
        if self.optimizer is None:
            return False
        if not getattr(self.optimizer, "has_basis", True):
            return True
        if self.refresh_every > 0 or self._epoch_starts:
            return False
        return self.is_due(iteration)

    def _check_refresh_policy(self) -> None:
        if self.optimizer is None or self.refresh_every > 0 or self._epoch_starts:
            return
        if self.every == 0 and self.dense_until == 0 and self.cadence is None:
            raise RuntimeError(
                f"EigenTracker: {type(self.optimizer).__name__} needs its eigenbasis refreshed, "
                "but no refresh policy reaches step(): refresh_every=0 refreshes at epoch starts "
                "and start_epoch() was never called, and every=0 gives no tracking points. Set "
                "every > 0 (refresh at each tracking point), refresh_every > 0, or call "
                "tracker.start_epoch(iteration, epoch) at each epoch start."
            )

    def step(self, iteration: int, epoch: int | None = None) -> EigenResult | None:
        """After an optimizer step (or with ``0`` before the first): track if due."""
        self.extras.remember(iteration)  # θ after this step: the last update (extras)
        self._check_refresh_policy()
        if self.last_iteration == iteration:
            return None
        refresh = self._refresh_due(iteration, at_epoch_start=False)
        refresh = refresh or self._refresh_in_step(iteration)
        if self.is_due(iteration) or refresh:
            return self.track(iteration, epoch, refresh=refresh)
        return None

    def start_epoch(self, iteration: int, epoch: int | None = None) -> EigenResult | None:
        """At an epoch start: track if due, at every epoch start, or to refresh the basis."""
        self.extras.remember(iteration)  # θ after this step: the last update (extras)
        self._epoch_starts = True
        refresh = self._refresh_due(iteration, at_epoch_start=True)
        if self.last_iteration == iteration:
            usable = self.result is not None and (self.result.converged or self.use_unconverged)
            if refresh and usable:
                self._set_basis(self.result)
            return None
        if self.epoch_start or refresh or self.is_due(iteration):
            return self.track(iteration, epoch, refresh=refresh)
        return None

    def finish(self, iteration: int, epoch: int | None = None) -> EigenResult | None:
        """At the end of training: one last point if ``at_end`` and not tracked yet."""
        self.extras.remember(iteration)  # θ after this step: the last update (extras)
        if self.at_end and self.last_iteration != iteration:
            return self.track(iteration, epoch)
        return None

    # -- the computation -----------------------------------------------------------------------

    def track(
        self, iteration: int, epoch: int | None = None, *, refresh: bool = False
    ) -> EigenResult:
        """Compute the top-k eigenpairs now and record them (refreshing the optimizer's basis
        if ``refresh``).
        """
        if self.operator is None:
            raise RuntimeError("EigenTracker.attach(model, loss_fn, data) first")
        start = time.perf_counter()
        previous = self.result
        init = None
        if self.warm_start and previous is not None:
            # The previous top-k and the pairs its guard deflated after them: those converge
            # early again, and the guard deflates them again (issue 23).
            init = previous.vectors
            if previous.extra_vectors is not None:
                init = torch.cat([init, previous.extra_vectors.to(init)])
        result, stderr = self._solve(init)
        solves = [(self.subset_size, result)]
        if self.subset is not None:
            result, stderr, solves = self._grow(result, stderr, solves)
        fields: dict[str, Any] = {
            "eigenvalues": [float(v) for v in result.values],
            "residuals": [float(r) for r in result.residuals],
            "n_matvecs": sum(int(r.n_matvecs) for _, r in solves),
            "guard_matvecs": sum(int(r.guard_matvecs) for _, r in solves),
            "subset_size": self.subset_size,
            "converged": bool(result.converged),
            "warm": init is not None,
            "frobenius_topk": frobenius_from_topk(result.values),
        }
        if not result.converged:
            fields["reason"] = result.reason
        if result.tie:  # λ_k has company within tol: the k-th eigenvector is not determined
            fields["tie"] = True
            fields["tie_values"] = [float(v) for v in result.tie_values]
        if stderr is not None:
            fields["eigenvalues_stderr"] = [float(x) for x in stderr]
            fields["stderr_matvecs"] = 0  # kept from the solve's products
        if self.subset is not None:
            fields.update(self._subset_fields(result, stderr, solves))
        if self.cadence is not None:
            fields.update(self.cadence.update(iteration, float(result.values[0]),
                                              float(stderr[0]), fields["n_matvecs"]))
        if previous is not None and previous.vectors.shape == result.vectors.shape:
            angles = principal_angles(previous.vectors, result.vectors)
            fields["angles"] = [float(a) for a in angles]
            fields["angle_max"] = float(angles.max())
        if self.operator_kind != "hessian":
            fields["operator"] = self.operator_kind
        if self.layer_shares:
            fields["layer_shares"] = operator_layer_shares(self.operator, result.vectors)
        # Optimizer-aware fields: preconditioned, batch/update sharpness, overlaps, threshold.
        fields.update(self.extras.fields(iteration, result, self.tol, self.max_matvecs))
        if refresh:
            if result.converged or self.use_unconverged:
                fields["refreshed"] = self._set_basis(result, fields)
            else:
                fields["refreshed"] = False
                fields["refresh_skipped"] = "not converged"
        if not result.converged:
            self._warn_unconverged(iteration, result, fields.get("refresh_skipped") is not None)
        self.result = result
        self.last_iteration = iteration
        self.points += 1
        fields["seconds"] = time.perf_counter() - start
        self._emit(epoch, iteration, fields)
        return result

    def _solve(self, init: Tensor | None) -> tuple[EigenResult, np.ndarray | None]:
        """One Lanczos solve on the current operator, and its eigenvalues' stderr."""
        assert self.operator is not None
        try:
            result = lanczos(
                self.operator,
                k=self.k,
                which=self.which,
                tol=self.tol,
                max_matvecs=self.max_matvecs,
                init=init,
                seed=self.seed,
                chunk_forms=self.stderr,
            )
            # The per-chunk forms come with the solve's own products: no product for them.
            stderr = (weighted_stderr(result.chunk_forms, result.chunk_sizes)
                      if self.stderr else None)
        finally:
            # Stale first-order graphs would hold the subset's activations during training.
            self.operator.clear_cache()
        return result, stderr

    def _grow(
        self, result: EigenResult, stderr: Any, solves: list[tuple[int, EigenResult]]
    ) -> tuple[EigenResult, Any, list[tuple[int, EigenResult]]]:
        """Subset auto: grow the prefix and solve again, warm, until λ₁'s relative stderr
        meets the target or the pool is used up (sharpest.train.adaptive).
        """
        assert self.subset is not None
        while not self.subset.meets(relative_stderr(float(result.values[0]), float(stderr[0]))):
            if not self.subset.grow(relative_stderr(float(result.values[0]),
                                                    float(stderr[0]))):
                break
            self._build_subset_operator()
            init = result.vectors
            if result.extra_vectors is not None:
                init = torch.cat([init, result.extra_vectors.to(init)])
            result, stderr = self._solve(init)
            solves.append((self.subset_size, result))
        return result, stderr, solves

    def _subset_fields(self, result: EigenResult, stderr: Any,
                       solves: list[tuple[int, EigenResult]]) -> dict[str, Any]:
        assert self.subset is not None
        rel = relative_stderr(float(result.values[0]), float(stderr[0]))
        fields: dict[str, Any] = {
            "lambda1_rel_stderr": rel,
            "subset_solves": [[n, int(r.n_matvecs)] for n, r in solves],
            "growth_matvecs": sum(int(r.n_matvecs) for _, r in solves[:-1]),
        }
        if not self.subset.meets(rel):
            fields["subset_note"] = (
                f"stderr(λ₁)/|λ₁| = {rel:.3g} misses the target {self.subset.rel_stderr:g} "
                f"at the pool's maximum of {self.subset.maximum} examples"
            )
        return fields

    def _set_basis(self, result: EigenResult, fields: dict[str, Any] | None = None) -> bool:
        """Give the optimizer the eigenvectors, sorted by ``order`` (it keeps its leading k);
        with ``basis_from="preconditioned"`` P⁻¹H's top right eigenvectors from this point
        (largest first, orthonormalised by the optimizer), or H's until the optimizer has a
        preconditioner (before its first step) and a converged P⁻¹H solve.
        """
        if self.basis_from == "preconditioned":
            directions = self.extras.directions
            if fields is not None:
                fields["basis"] = "hessian" if directions is None else "preconditioned"
            if directions is not None:
                changed = self.optimizer.set_basis(directions, orthonormalize=True)
                return True if changed is None else bool(changed)
        rows = basis_order(result.values, self.order)
        k = getattr(self.optimizer, "k", None)
        if (
            self.order == "algebraic"
            and not self._warned_order
            and isinstance(k, int)
            and not algebraic_top_is_exact(result.values, k, result.which)
        ):
            self._warn(
                f"order 'algebraic' with which='LM': fewer than {k} of the top {self.k} |λ| are "
                "≥ 0, so larger algebraic eigenvalues may be missing from the basis (set "
                "track.which: LA; warned once)"
            )
            self._warned_order = True
        vectors = result.vectors[torch.as_tensor(rows, device=result.vectors.device)]
        changed = self.optimizer.set_basis(vectors, orthonormalize=True)
        return True if changed is None else bool(changed)

    def _warn(self, message: str) -> None:
        if not self.verbose:
            return
        line = f"warning: {message}"
        try:  # keeps a progress bar intact
            from tqdm.auto import tqdm

            tqdm.write(line, file=sys.stderr)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            print(line, file=sys.stderr, flush=True)

    def _warn_unconverged(self, iteration: int, result: EigenResult, kept: bool) -> None:
        rel = np.asarray(result.residuals) / np.maximum(np.abs(np.asarray(result.values)), 1e-30)
        worst = float(rel.max()) if rel.size else float("nan")
        if not kept:
            what = "recorded as unconverged"
        elif getattr(self.optimizer, "has_basis", True):
            what = "the optimizer keeps its previous basis"
        else:
            what = "the optimizer has no basis yet and steps as plain SGD"
        self._warn(
            f"eigen point at iteration {iteration} did not converge ({result.n_matvecs} "
            f"products, largest relative residual {worst:.2g}, tol {self.tol:g}: "
            f"{result.reason or 'unknown'}); {what}"
        )

    def _emit(self, epoch: int | None, iteration: int, fields: dict[str, Any]) -> None:
        if self._log is not None:
            self._log("eigen", iteration=iteration, epoch=epoch, **fields)
        else:
            self.records.append(
                {"event": "eigen", "epoch": epoch, "iteration": iteration, **fields}
            )

    # -- callback hooks ------------------------------------------------------------------------

    def on_train_start(self, trainer: TrainerView) -> None:
        self.attach(
            trainer.model,
            trainer.loss_fn,
            trainer.hessian_data,
            trainer.config.weight_decay,
            optimizer=trainer.optimizer,
            log=trainer.log,
            decay_params=getattr(trainer, "decay_params", None),
            train_data=self._training_set(trainer),
        )
        self.extras.remember(trainer.iteration)  # θ at the start (or at the resumed step)
        self._epoch_starts = True  # the trainer calls on_epoch_start (not on a mid-epoch resume)
        if self.cadence is not None:
            self.cadence.iterations_per_epoch = int(trainer.iterations_per_epoch)
        self.verbose = bool(getattr(trainer, "is_main", True))
        if self.result is not None:
            self.result = replace(self.result, vectors=self.result.vectors.to(trainer.device))

    def _training_set(self, trainer: TrainerView) -> Any:
        """The training set batch sharpness draws from (when on): ``trainer.data.train``."""
        if self.extras.batches == 0 and not self.extras.overlap:
            return None
        return getattr(getattr(trainer, "data", None), "train", None)

    def on_epoch_start(self, trainer: TrainerView) -> None:
        self.start_epoch(trainer.iteration, trainer.epoch)

    def on_step_end(self, trainer: TrainerView) -> None:
        # The last step of an epoch that another epoch follows: its iteration is that epoch's
        # start, handled (with the same schedule) by on_epoch_start, so the line says so.
        if trainer.end_of_epoch and not trainer.last_epoch:
            return
        self.step(trainer.iteration, trainer.epoch)

    def on_train_end(self, trainer: TrainerView) -> None:
        if trainer.status == "finished":
            self.finish(trainer.iteration, trainer.epoch)

    def state_dict(self) -> dict[str, Any]:
        return {
            "result": None
            if self.result is None
            else eigen_state(self.result, self.last_iteration),
            "last_iteration": self.last_iteration,
            "points": self.points,
            "extras": self.extras.state_dict(),
            **self._adaptive_state(),
        }

    def _adaptive_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.cadence is not None:
            state["cadence"] = self.cadence.state_dict()
        if self.subset is not None:
            state["subset"] = self.subset.state_dict()
        elif self._subset_state is not None:
            state["subset"] = dict(self._subset_state)
        return state

    def _load_adaptive_state(self, state: dict[str, Any]) -> None:
        if self.cadence is not None and state.get("cadence") is not None:
            self.cadence.load_state_dict(state["cadence"])
        if self.subset_min is not None and state.get("subset") is not None:
            self._subset_state = dict(state["subset"])
            if self.subset is not None:  # attached already: rebuild at the saved size
                self.subset.load_state_dict(self._subset_state)
                self._build_subset_operator()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        res = state.get("result")
        device = self.operator.device if self.operator is not None else None
        self.result = None if res is None else eigen_from_state(res, device)
        self.last_iteration = state.get("last_iteration")
        self.points = int(state.get("points", 0))
        self.extras.load_state_dict(state.get("extras") or {})
        self._load_adaptive_state(state)

    def load_initial(self, state: dict[str, Any]) -> None:
        """Start from another run's eigenpairs (``--init-from``): they warm-start the first
        point and the first angles are measured against them; nothing else is inherited.
        """
        self.result = eigen_from_state(state)
        self.last_iteration = None
