"""The optimizer-aware fields of an ``"eigen"`` line: what :class:`EigenTracker` adds with
``track.precondition``, ``track.batch_sharpness`` and ``track.overlap``.

At each tracking point, after the top-k solve (``V`` its eigenvectors, rows):

- ``stability_threshold`` (always, when the optimizer has one:
  :func:`sharpest.curvature.stability_threshold` at its current learning rate; absent for other
  optimizers and for parameter groups with different rates): the line its sharpness is
  compared with (λ(P⁻¹H) for adaptive optimizers, λ(H) for SGD).
- ``precondition="optimizer"``: ``preconditioned``, the top ``precondition_k`` eigenvalues
  (largest algebraic, descending) of P⁻¹H with P read from the optimizer's state now
  (:class:`sharpest.curvature.PreconditionedOperator`, Cohen et al. 2022), warm-started from the
  previous point's; ``preconditioned_residuals``, ``preconditioned_converged``,
  ``preconditioned_matvecs``. Absent before the optimizer's first step (no state, no P).
- ``batch_sharpness=N > 0``: ``batch_sharpness`` and ``batch_sharpness_stderr`` over N
  minibatches of the training batch size (:func:`sharpest.curvature.batch_sharpness`;
  ``batch_sharpness_matvecs`` = N, ``batch_sharpness_gradients`` = N), and
  ``update_sharpness`` = uᵀHu/‖u‖² on the Hessian subset for the optimizer's last update
  u = θ_t − θ_(t−1) (``update_sharpness_matvecs`` = 1; Andreyev & Beneventano 2024).
- ``overlap=True``: ``gradient_overlap`` = ‖P_k g‖²/‖g‖² for the full gradient g of the Hessian
  subset, ``gradient_overlap_batch`` the mean of the same share over the minibatch gradients (the
  batch-sharpness batches, or ``OVERLAP_BATCHES`` of them when batch sharpness is off), and
  ``update_overlap`` for u; P_k the projector on the k tracked eigenvectors (Gur-Ari et al.
  2018). No products (``overlap_matvecs`` = 0); ``overlap_gradients`` counts the gradients.

**The minibatches** are drawn afresh at each point from ``train_data`` (the training set as the
trainer holds it: not augmented, in the Hessian's evaluation semantics): N batches of
``batch_size`` examples, each without replacement, seeded by ``(seed, iteration)`` so a rerun or
a resume draws the same ones. A list of batches given as ``train_data`` is used as is (N of
them, drawn by the same seed).

**The last update** u is the parameter difference between the previous step and this one: the
parameters are copied at every step while these fields are on (two flat float64 copies held:
θ_t and θ_(t−1)), so the update fields are absent at a point whose previous step was not seen
(the first point; in a hand-written loop, the first point after a resume — the trainer
remembers θ of the step it resumes at).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sharpest.curvature import (
    EigenResult,
    PreconditionedOperator,
    batch_gradient_overlap,
    batch_sharpness,
    directional_sharpness,
    flatten,
    lanczos,
    subspace_share,
)
from sharpest.curvature.inputs import batch_size as _batch_size
from sharpest.curvature.inputs import index_batch
from sharpest.curvature.preconditioner import (
    ADAPTIVE_KINDS,
    PreconditionerError,
    diagonal_preconditioner,
    optimizer_kind,
    stability_threshold,
    unwrap,
)

__all__ = ["OVERLAP_BATCHES", "PRECONDITION", "OptimizerCurvature", "draw_minibatches"]

#: What ``track.precondition`` may say.
PRECONDITION = ("none", "optimizer")
#: Minibatches for ``gradient_overlap_batch`` when batch sharpness is off.
OVERLAP_BATCHES = 8


def draw_minibatches(data: Any, batch_size: int | None, n: int, seed: int,
                     iteration: int) -> list[Any]:  # fmt: skip
    """``n`` minibatches from ``data`` (module docstring): from an ``(inputs, targets)`` pair,
    ``batch_size`` examples each, without replacement within a batch; from a list of batches, n
    of them (all when fewer). Seeded by ``(seed, iteration)``.
    """
    rng = np.random.default_rng([int(seed), int(iteration)])
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], Tensor):
        if batch_size is None:
            raise ValueError("batch sharpness needs the training batch size (batch_size=)")
        total = _batch_size(data[0])
        size = min(int(batch_size), total)
        out = []
        for _ in range(n):
            index = torch.from_numpy(rng.choice(total, size=size, replace=False))
            out.append((index_batch(data[0], index), data[1][index.to(data[1].device)]))
        return out
    batches = list(data)
    if not batches:
        raise ValueError("no training batches to draw the minibatches from")
    chosen = rng.choice(len(batches), size=min(n, len(batches)), replace=False)
    return [tuple(batches[i]) for i in sorted(chosen)]


class OptimizerCurvature:
    """The fields of the module docstring, for one :class:`EigenTracker`.

    Args:
        precondition: ``"none"`` or ``"optimizer"`` (P⁻¹H's top eigenvalues).
        batch_sharpness: minibatches per point for batch sharpness (0: off; also turns on
            ``update_sharpness``).
        overlap: record the gradient's and the update's share of the top-k subspace.
        batch_size: the training batch size (the minibatches' size).
        precondition_k: eigenvalues of P⁻¹H per point.
        seed: seeds the minibatch draws and the preconditioned solve.
    """

    def __init__(self, precondition: str = "none", batch_sharpness: int = 0,
                 overlap: bool = False, batch_size: int | None = None, precondition_k: int = 1,
                 seed: int = 0) -> None:  # fmt: skip
        if precondition not in PRECONDITION:
            raise ValueError(f"precondition must be one of {PRECONDITION}, got {precondition!r}")
        if batch_sharpness < 0 or precondition_k < 1:
            raise ValueError("batch_sharpness must be ≥ 0 and precondition_k ≥ 1")
        self.precondition = precondition
        self.batches = int(batch_sharpness)
        self.overlap = bool(overlap)
        self.batch_size = batch_size
        self.precondition_k = int(precondition_k)
        #: The latest converged top-k right eigenvectors of P⁻¹H (rows), or None.
        self.directions: Tensor | None = None
        self.seed = int(seed)
        self.optimizer: Any = None
        self.operator: Any = None
        self._batch_args: tuple[nn.Module, Callable, float, dict[str, Any]] | None = None
        self.train_data: Any = None
        self._theta: Tensor | None = None
        self._theta_iteration: int | None = None
        self._previous: Tensor | None = None
        self._previous_iteration: int | None = None
        self._pre_vectors: Tensor | None = None

    @property
    def needs_update(self) -> bool:
        return self.batches > 0 or self.overlap

    def attach(
        self, operator: Any, model: nn.Module, loss_fn: Callable, weight_decay: float,
        operator_options: dict[str, Any], optimizer: Any, train_data: Any,
    ) -> None:  # fmt: skip
        """Bind the tracked operator, what per-batch operators are built from, the optimizer
        (any ``torch.optim`` one) and the data the minibatches come from.
        """
        self.operator, self.optimizer, self.train_data = operator, optimizer, train_data
        options = {k: v for k, v in operator_options.items() if k != "cache_graphs"}
        self._batch_args = (model, loss_fn, weight_decay, options)
        if self.precondition == "optimizer" and optimizer_kind(optimizer) not in ADAPTIVE_KINDS:
            raise PreconditionerError(
                "track.precondition: optimizer needs an adaptive optimizer (Adam, AdamW, RMSprop, "
                f"Adagrad) to read P from; got {type(optimizer).__name__}"
            )
        if (self.batches > 0 or self.overlap) and train_data is None:
            raise ValueError("batch sharpness and the overlaps need training data")

    def remember(self, iteration: int) -> None:
        """Called first thing at every step (and epoch start) ``iteration``: keep θ_t and the
        θ_(t−1) seen one step before, whose difference is the last update.
        """
        if not self.needs_update or self.operator is None or self._theta_iteration == iteration:
            return
        self._previous, self._previous_iteration = self._theta, self._theta_iteration
        self._theta = flatten([p.detach() for p in self.operator.params]).double().clone()
        self._theta_iteration = iteration

    def _last_update(self, iteration: int) -> Tensor | None:
        """u = θ_t − θ_(t−1), or None when step t − 1 was not seen (or nothing moved)."""
        if (self._previous is None or self._theta_iteration != iteration
                or self._previous_iteration != iteration - 1):  # fmt: skip
            return None
        u = self._theta - self._previous
        return u if bool((u != 0).any()) else None

    # -- the fields ---------------------------------------------------------------------------

    def _steps_forward(self) -> bool:
        """Whether every group's learning rate is positive: at η = 0 (a warm-up's first step, a
        schedule's end) no curvature is unstable and the line is left off.
        """
        groups = getattr(self.optimizer, "param_groups", None) or []
        return bool(groups) and all(float(g.get("lr", 0.0)) > 0 for g in groups)

    def fields(self, iteration: int, result: EigenResult, tol: float,
               max_matvecs: int | None) -> dict[str, Any]:  # fmt: skip
        """This point's fields (module docstring); the operator's graph cache is cleared."""
        out: dict[str, Any] = {}
        try:
            if optimizer_kind(self.optimizer) != "unknown" and self._steps_forward():
                # Omitted, not fatal, when the groups disagree (per-layer rates: no one line).
                with contextlib.suppress(PreconditionerError):
                    out["stability_threshold"] = stability_threshold(self.optimizer)
            if self.precondition == "optimizer":
                out.update(self._preconditioned(tol, max_matvecs))
            if self.batches > 0 or self.overlap:
                out.update(self._along_batches_and_update(iteration, result))
        finally:
            self.operator.clear_cache()
        return out

    def _preconditioned(self, tol: float, max_matvecs: int | None) -> dict[str, Any]:
        try:
            p = diagonal_preconditioner(self.optimizer, self.operator.params)
        except PreconditionerError:
            # Before the first step there is no P yet (Adagrad fills its state with step 0).
            state = unwrap(self.optimizer).state
            if not any(float(st.get("step", 0)) > 0 for st in state.values()):
                return {}
            raise
        op = PreconditionedOperator(self.operator, p)
        init = self._pre_vectors
        if init is not None and init.shape[1] != op.size:
            init = None
        res = lanczos(op, k=self.precondition_k, which="LA", tol=tol, max_matvecs=max_matvecs,
                      init=init, seed=self.seed)  # fmt: skip
        self._pre_vectors = res.vectors
        # In parameter space: P⁻¹H's right eigenvectors P^(-1/2)wᵢ, largest λ first (which="LA"),
        # for an optimizer nudged along them (optimizer.nudge_basis: preconditioned).
        self.directions = op.right_eigenvectors(res.vectors) if res.converged else None
        return {
            "preconditioned": [float(v) for v in res.values],
            "preconditioned_residuals": [float(r) for r in res.residuals],
            "preconditioned_converged": bool(res.converged),
            "preconditioned_matvecs": int(res.n_matvecs),
        }

    def _along_batches_and_update(self, iteration: int, result: EigenResult) -> dict[str, Any]:
        model, loss_fn, wd, options = self._batch_args
        n = self.batches or OVERLAP_BATCHES
        batches = draw_minibatches(self.train_data, self.batch_size, n, self.seed, iteration)
        basis = result.vectors if self.overlap else None
        out: dict[str, Any] = {}
        u = self._last_update(iteration)
        if self.batches > 0:
            bs = batch_sharpness(model, loss_fn, batches, wd, basis=basis, **options)
            out.update(batch_sharpness=bs.value, batch_sharpness_stderr=bs.stderr,
                       batch_sharpness_matvecs=bs.n_matvecs,
                       batch_sharpness_gradients=bs.n_gradients)  # fmt: skip
            batch_shares = bs.overlaps
            if u is not None:
                out["update_sharpness"] = directional_sharpness(self.operator, u)
                out["update_sharpness_matvecs"] = 1
        if self.overlap:
            if self.batches == 0:
                batch_shares = batch_gradient_overlap(model, loss_fn, batches, basis, wd,
                                                      **options)  # fmt: skip
            out["gradient_overlap"] = subspace_share(basis, self.operator.gradient())
            out["gradient_overlap_batch"] = float(np.mean(batch_shares))
            if u is not None:
                out["update_overlap"] = subspace_share(basis, u)
            out["overlap_matvecs"] = 0
            out["overlap_gradients"] = 1 + (0 if self.batches else len(batches))
        return out

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        # The directions too: a resumed run that refreshes from the point it stopped at must
        # give the optimizer the same basis as the run that never stopped.
        return {"preconditioned_vectors": None if self._pre_vectors is None
                else self._pre_vectors.detach().cpu(),
                "preconditioned_directions": None if self.directions is None
                else self.directions.detach().cpu()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        vectors = state.get("preconditioned_vectors")
        self._pre_vectors = None if vectors is None else torch.as_tensor(vectors)
        directions = state.get("preconditioned_directions")
        self.directions = None if directions is None else torch.as_tensor(directions)
