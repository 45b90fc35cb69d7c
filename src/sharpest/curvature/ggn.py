"""The generalised Gauss-Newton matrix and the empirical Fisher, as linear operators.

With outputs f(θ) of all N examples stacked and the mean loss ``L(f) = (1/N) Σₙ ℓ(fₙ, yₙ)``,
the Hessian splits as ``∇²L = Jᵀ ∇²_f L J + Σ (∂L/∂f)·∇²f``. The generalised Gauss-Newton
(GGN, Schraudolph 2002) keeps the first term:

    G = Jᵀ (∇²_f L) J + λ·I,        J = ∂f/∂θ,

λ the weight decay (the (λ/2)‖θ‖² term is quadratic, so its GGN is its Hessian). G is positive
semi-definite whenever the loss is convex in the outputs (cross-entropy, squared error), and
equals the Hessian when the model is linear in θ.

The empirical Fisher (``kind="fisher"``) is the mean outer product of per-example gradients,

    F = (1/N) Σₙ gₙ gₙᵀ + λ·I,        gₙ = ∇_θ ℓ(f(xₙ; θ), yₙ),

ℓ being ``loss_fn`` applied to example n alone. It is *not* the Fisher information (which
samples targets from the model) and differs from the GGN away from a perfect fit (Kunstner et
al. 2019); it is offered because optimisers (K-FAC variants, Adam's second moment) use it.

Products use reverse mode only (the double-backward trick: ``J v = ∂(Jᵀu · v)/∂u``), so every
model the Hessian operator supports works, including RNNs (cuDNN off as for the Hessian).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sharpest.curvature.operator import (
    Batch,
    HessianOperator,
    LossFn,
    NonFiniteError,
    evaluation_mode,
)

__all__ = ["GGNOperator", "OPERATOR_KINDS", "build_operator"]

#: What ``track.operator`` may name.
OPERATOR_KINDS = ("hessian", "ggn", "fisher")


class GGNOperator(HessianOperator):
    """``Jᵀ H_out J`` (``kind="ggn"``) or the empirical Fisher (``kind="fisher"``) of a model's
    mean loss over fixed data, with :class:`HessianOperator`'s interface and semantics: ``size``,
    ``matvec``, ``matmat``, ``dtype``/``device``, ``weight_decay`` (adds λ·v), evaluation mode
    during products, ``chunk_size``, graph caching, a true mean over all examples, and
    data-parallel all-reduce under ``torch.distributed`` (all inherited).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Batch | Iterable[Batch],
        weight_decay: float = 0.0,
        *,
        kind: str = "ggn",
        params: Sequence[Tensor] | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if kind not in ("ggn", "fisher"):
            raise ValueError(f"kind must be 'ggn' or 'fisher', got {kind!r}")
        self.kind = kind
        super().__init__(model, loss_fn, data, weight_decay, params=params, **kwargs)

    def _outputs_and_loss(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        inputs, targets, _ = self.chunks[index]
        outputs = self.model(**inputs) if isinstance(inputs, Mapping) else self.model(inputs)
        if not isinstance(outputs, Tensor):
            raise TypeError(
                f"GGNOperator needs a model returning one tensor, got {type(outputs).__name__}"
            )
        loss = self.loss_fn(outputs, targets)
        if loss.dim() != 0:
            raise ValueError(
                f"loss_fn must return a scalar (the mean over the batch), got shape "
                f"{tuple(loss.shape)}"
            )
        if not torch.isfinite(loss):
            raise NonFiniteError(f"the loss of chunk {index} of the data is {loss.item()}")
        return outputs, targets, loss

    def _chunk_gradient_graph(self, index: int) -> tuple:  # type: ignore[override]
        """The pieces a product reuses: (y, h, u, Jᵀu) with y what J differentiates (the
        outputs, or the per-example losses for the Fisher), h = ∂L/∂y with its graph (GGN)."""
        with torch.enable_grad():
            outputs, targets, loss = self._outputs_and_loss(index)
            if self.kind == "ggn":
                y = outputs
                h = torch.autograd.grad(loss, outputs, create_graph=True)[0]
            else:
                # Per-example losses: loss_fn on each example alone (ℓₙ of the docstring).
                y = torch.stack(
                    [self.loss_fn(outputs[i : i + 1], targets[i : i + 1])
                     for i in range(outputs.shape[0])]
                )
                h = None
            u = torch.zeros_like(y, requires_grad=True)
            jtu = torch.autograd.grad(
                y, self.params, grad_outputs=u, create_graph=True, allow_unused=True
            )
        return y, h, u, jtu

    def _local_products(self, v_parts: list[list[Tensor]], out: Tensor) -> None:
        m = len(v_parts)
        with evaluation_mode(self.model), self._cudnn(), torch.enable_grad():
            for index, (y, h, u, jtu) in self._graphs():
                n = self.chunks[index][2]
                # GGN: the chunk's loss is a mean over its n examples, so weight n/N. Fisher:
                # Σₙ gₙ (gₙᵀv) over the chunk's examples, divided by N.
                weight = (n if self.kind == "ggn" else 1) / self.num_examples
                live = [i for i, g in enumerate(jtu) if g is not None and g.requires_grad]
                for j in range(m):
                    if live:
                        jv = torch.autograd.grad(
                            [jtu[i] for i in live], u,
                            grad_outputs=[v_parts[j][i] for i in live], retain_graph=True,
                        )[0]
                    else:
                        jv = torch.zeros_like(y)
                    if h is None:
                        back = jv
                    elif h.requires_grad:
                        back = torch.autograd.grad(h, y, grad_outputs=jv, retain_graph=True)[0]
                    else:  # the loss is linear in the outputs: no curvature
                        back = torch.zeros_like(y)
                    gv = torch.autograd.grad(
                        y, self.params, grad_outputs=back, retain_graph=True, allow_unused=True
                    )
                    row = out[j]
                    for g, (start, stop) in zip(gv, self._slices):
                        if g is not None:
                            row[start:stop].add_(g.reshape(-1), alpha=weight)
                    if not torch.isfinite(row.sum()):
                        raise NonFiniteError(
                            f"the {self.kind.upper()}-vector product of chunk {index} (examples "
                            f"{self._chunk_offset(index)}…) is not finite"
                        )

    def __repr__(self) -> str:
        return super().__repr__().replace("HessianOperator(", f"GGNOperator(kind={self.kind!r}, ")


def build_operator(
    kind: str,
    model: nn.Module,
    loss_fn: LossFn,
    data: Batch | Iterable[Batch],
    weight_decay: float = 0.0,
    **kwargs: Any,
) -> HessianOperator:
    """``"hessian"`` → :class:`HessianOperator`; ``"ggn"`` / ``"fisher"`` → :class:`GGNOperator`."""
    if kind == "hessian":
        return HessianOperator(model, loss_fn, data, weight_decay, **kwargs)
    if kind in ("ggn", "fisher"):
        return GGNOperator(model, loss_fn, data, weight_decay, kind=kind, **kwargs)
    raise ValueError(f"operator must be one of {OPERATOR_KINDS}, got {kind!r}")
