"""Sharpness along directions that matter to the optimizer, and the gradient's top-k share.

- **Directional sharpness** (:func:`directional_sharpness`): ``uᵀHu/‖u‖²``, the curvature of
  the loss along a direction u, e.g. the optimizer's last update (*update sharpness*, Andreyev
  & Beneventano, 2024, *Edge of stochastic stability*). One Hessian-vector product.
- **Batch sharpness** (:func:`batch_sharpness`, same paper):
  ``E_B[g_Bᵀ H_B g_B / ‖g_B‖²]`` over minibatches B, each with its *own* gradient
  ``g_B = ∇L_B`` and Hessian ``H_B = ∇²L_B`` (L_B the mean loss over B, plus the L2 term when
  ``weight_decay`` is given), estimated by the mean over the given batches with its standard
  error ``s/√N`` (s the sample standard deviation, N the number of batches). Under minibatch
  SGD it is this quantity, not λ₁(H), that settles near 2/η. One gradient and one product per
  batch.
- **Top-subspace share** (:func:`subspace_share`): ``‖P_k g‖²/‖g‖²`` with ``P_k = VᵀV`` the
  projector on the span of orthonormal rows V (the tracked top-k eigenvectors): the fraction of
  a vector's squared norm inside the top subspace (Gur-Ari, Roberts & Dyer, 2018, *Gradient
  descent happens in a tiny subspace*). No product. :func:`batch_sharpness` and
  :func:`batch_gradient_overlap` also give the mean share of the minibatch gradients.

Every quantity is measured with the model in ``semantics`` (evaluation by default, as the
Hessian operator), so it is the same function the tracked Hessian is of.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sharpest.curvature.operator import HessianOperator

__all__ = [
    "BatchSharpness",
    "batch_gradient_overlap",
    "batch_sharpness",
    "directional_sharpness",
    "subspace_share",
]


def _ratio_direction(vector: Tensor, what: str) -> Tensor:
    v = vector.detach().to(torch.float64).reshape(-1)
    norm2 = float(v @ v)
    if not math.isfinite(norm2):
        raise ValueError(f"{what} is not finite")
    if norm2 == 0.0:
        raise ValueError(f"{what} is zero: its sharpness or share is undefined")
    return v


def subspace_share(basis: Tensor, vector: Tensor) -> float:
    """``‖VᵀV g‖²/‖g‖² = ‖V g‖²/‖g‖²`` for orthonormal rows ``basis`` V ``(k, n)`` and a flat
    ``vector`` g ``(n,)``: the share of g's squared norm in span(V), in [0, 1].

    Raises:
        ValueError: shapes that do not match, or a zero or non-finite vector.

    Example:
        >>> v = torch.eye(3)[:1]                       # span(e₁)
        >>> subspace_share(v, torch.tensor([3.0, 4.0, 0.0]))
        0.36
    """
    g = _ratio_direction(vector, "the vector")
    if basis.dim() != 2 or basis.shape[1] != g.numel():
        raise ValueError(
            f"basis must be (k, {g.numel()}) rows over the same parameters, got "
            f"{tuple(basis.shape)}"
        )
    v = basis.detach().to(device=g.device, dtype=torch.float64)
    coords = v @ g
    return float(coords @ coords) / float(g @ g)


def directional_sharpness(op: Any, direction: Tensor) -> float:
    """``uᵀHu/‖u‖²`` for a flat ``direction`` u and an operator H (``matvec``): one product.

    Raises:
        ValueError: a zero or non-finite direction.
    """
    u = _ratio_direction(direction, "the direction")
    hu = op.matvec(u.to(device=getattr(op, "device", u.device)))
    return float(hu.to(torch.float64).cpu() @ u.cpu()) / float(u @ u)


@dataclass(frozen=True)
class BatchSharpness:
    """:func:`batch_sharpness`'s result.

    Attributes:
        value: the mean of ``values`` (the batch sharpness).
        stderr: its standard error ``s/√N`` (NaN for one batch).
        values: ``g_Bᵀ H_B g_B / ‖g_B‖²`` per batch, in batch order.
        overlaps: per batch, the share of ``g_B`` in span(basis) (None without a basis).
        n_matvecs: Hessian-vector products spent (one per batch).
        n_gradients: gradients computed (one per batch).
    """

    value: float
    stderr: float
    values: np.ndarray
    overlaps: np.ndarray | None
    n_matvecs: int
    n_gradients: int

    @property
    def overlap(self) -> float | None:
        """The mean share of the batch gradients in span(basis), or None."""
        return None if self.overlaps is None else float(np.mean(self.overlaps))


def _batch_operators(
    model: nn.Module, loss_fn: Callable[[Any, Tensor], Tensor], batches: Sequence[Any],
    weight_decay: float, operator_options: dict[str, Any],
) -> list[HessianOperator]:  # fmt: skip
    """One operator per batch. A mean ``loss_fn`` is checked (three forwards) on the first
    batch only: the others get it as the equivalent ``reduction="sum"`` of n·loss (divided by
    their n again), which skips the check.
    """
    if len(batches) == 0:
        raise ValueError("no minibatches given")
    options = {"cache_graphs": False, **operator_options}
    first = HessianOperator(model, loss_fn, batches[0], weight_decay, **options)
    rest_fn, rest_options = loss_fn, options
    if options.get("reduction", "mean") == "mean":
        def rest_fn(outputs: Any, targets: Tensor) -> Tensor:
            return loss_fn(outputs, targets) * targets.shape[0]

        rest_options = {**options, "reduction": "sum"}
    return [first] + [
        HessianOperator(model, rest_fn, batch, weight_decay, **rest_options)
        for batch in batches[1:]
    ]


def _stderr(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan


def batch_sharpness(
    model: nn.Module,
    loss_fn: Callable[[Any, Tensor], Tensor],
    batches: Sequence[Any],
    weight_decay: float = 0.0,
    *,
    basis: Tensor | None = None,
    **operator_options: Any,
) -> BatchSharpness:
    """Batch sharpness ``E_B[g_Bᵀ H_B g_B / ‖g_B‖²]`` over ``batches`` (module docstring).

    Args:
        model: the network, as for :class:`HessianOperator`; each batch B gets its own
            operator, so ``g_B`` and ``H_B`` are of the mean loss over B alone.
        loss_fn: ``loss_fn(outputs, targets)``, the mean over the batch, as for
            :class:`HessianOperator`.
        weight_decay: λ of the (λ/2)·‖θ‖² term, as for :class:`HessianOperator`.
        batches: the minibatches, each an ``(inputs, targets)`` pair (of the training batch
            size, for the quantity of Andreyev & Beneventano).
        basis: optional orthonormal rows ``(k, n)``; then each ``g_B``'s share in their span
            is measured too (no extra product: ``overlaps``).
        **operator_options: passed to each :class:`HessianOperator` (``semantics``,
            ``decay_params``, ``chunk_size``, ``params``, …).

    Raises:
        ValueError: no batches, or a batch whose gradient is zero.
    """
    values, overlaps = [], []
    for i, op in enumerate(_batch_operators(model, loss_fn, batches, weight_decay,
                                            operator_options)):  # fmt: skip
        g = _ratio_direction(op.gradient(), f"the gradient of minibatch {i}")
        values.append(float(op.matvec(g).cpu() @ g.cpu()) / float(g @ g))
        if basis is not None:
            overlaps.append(subspace_share(basis, g))
    arr = np.asarray(values, dtype=np.float64)
    return BatchSharpness(
        value=float(arr.mean()),
        stderr=_stderr(arr),
        values=arr,
        overlaps=None if basis is None else np.asarray(overlaps, dtype=np.float64),
        n_matvecs=len(values),
        n_gradients=len(values),
    )


def batch_gradient_overlap(
    model: nn.Module,
    loss_fn: Callable[[Any, Tensor], Tensor],
    batches: Sequence[Any],
    basis: Tensor,
    weight_decay: float = 0.0,
    **operator_options: Any,
) -> np.ndarray:
    """Per batch, the share ``‖P_k g_B‖²/‖g_B‖²`` of its gradient in span(``basis``) (one
    gradient per batch, no product); their mean is the minibatch gradient overlap.
    """
    ops = _batch_operators(model, loss_fn, batches, weight_decay, operator_options)
    return np.asarray(
        [subspace_share(basis, _ratio_direction(op.gradient(), f"the gradient of minibatch {i}"))
         for i, op in enumerate(ops)],
        dtype=np.float64,
    )  # fmt: skip
