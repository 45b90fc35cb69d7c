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

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sharpest.curvature.inputs import semantics_mode
from sharpest.curvature.operator import HessianOperator
from sharpest.curvature.own_loss import ModelLoss
from sharpest.curvature.risk import Batch, LossFn, NonFiniteError

__all__ = ["GGNOperator", "OPERATOR_KINDS", "build_operator"]

#: What ``track.operator`` may name.
OPERATOR_KINDS = ("hessian", "ggn", "fisher")


class GGNOperator(HessianOperator):
    """``Jᵀ H_out J`` (``kind="ggn"``) or the empirical Fisher (``kind="fisher"``) of a model's
    mean loss over fixed data, with :class:`HessianOperator`'s interface and semantics: ``size``,
    ``matvec``, ``matmat``, ``dtype``/``device``, ``weight_decay`` (adds λ·v), evaluation mode
    during products, ``chunk_size``, graph caching, a true mean over all examples, and
    data-parallel all-reduce under ``torch.distributed`` (all inherited).

    The GGN's chunks are weighted as the Hessian's, u_c/U (``units``: examples by default,
    or e.g. tokens); the empirical Fisher is a mean over examples, so it takes no ``units``.

    Args:
        model: the network, as for :class:`HessianOperator`.
        loss_fn: ``loss_fn(outputs, targets)`` of a model returning one tensor; the model's own
            loss (``loss_fn=None``) gives no outputs to linearise around and is refused.
        data: the fixed data, as for :class:`HessianOperator`.
        weight_decay: λ, as for :class:`HessianOperator`.
        kind: ``"ggn"`` or ``"fisher"``.
        params: the parameters, as for :class:`HessianOperator`.
        **kwargs: the other options of :class:`HessianOperator`.
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
        if loss_fn is None or isinstance(loss_fn, ModelLoss):
            raise ValueError(
                f"the {kind.upper()} needs loss_fn(outputs, targets) of the model's outputs; the "
                "model's own loss (loss_fn=None) hides them in .loss. Pass a loss_fn, e.g. the "
                "cross-entropy of the logits (shifted for a causal LM), or use the Hessian"
            )
        if kind == "fisher" and (kwargs.get("units") is not None
                                 or getattr(loss_fn, "units", None) is not None):
            raise ValueError("the empirical Fisher is a mean over examples: it takes no units")
        self.kind = kind
        self.product_name = kind.upper()
        super().__init__(model, loss_fn, data, weight_decay, params=params, **kwargs)

    def _outputs_and_loss(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        targets = self.chunks[index][1]
        outputs = self._outputs(index)
        if not isinstance(outputs, Tensor):
            raise TypeError(
                f"GGNOperator needs a model returning one tensor, got {type(outputs).__name__}"
            )
        loss = self._loss_of(outputs, index)
        return outputs, targets, loss

    def _chunk_gradient_graph(self, index: int) -> tuple:  # type: ignore[override]
        """The pieces a product reuses: (y, h, u, Jᵀu) with y what J differentiates (the
        outputs, or the per-example losses for the Fisher), h = ∂L/∂y with its graph (GGN).
        """
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
                )  # with reduction="sum" a one-example sum is that example's loss
                h = None
            u = torch.zeros_like(y, requires_grad=True)
            jtu = torch.autograd.grad(
                y, self.params, grad_outputs=u, create_graph=True, allow_unused=True
            )
        return y, h, u, jtu

    def _jv_and_back(self, graph: tuple, v_part: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``J v`` and what ``Jᵀ`` is applied to: ``H_out J v`` (GGN) or ``J v`` (Fisher)."""
        y, h, u, jtu = graph
        live = [i for i, g in enumerate(jtu) if g is not None and g.requires_grad]
        if live:
            jv = torch.autograd.grad(
                [jtu[i] for i in live], u, grad_outputs=[v_part[i] for i in live],
                retain_graph=True,
            )[0]
        else:
            jv = torch.zeros_like(y)
        if h is None:
            return jv, jv
        if not h.requires_grad:  # the loss is linear in the outputs: no curvature
            return jv, torch.zeros_like(y)
        return jv, torch.autograd.grad(h, y, grad_outputs=jv, retain_graph=True)[0]

    def _local_products(self, v_parts: list[list[Tensor]], out: Tensor) -> None:
        m = len(v_parts)
        with semantics_mode(self.model, self.semantics), self._product_kernels(), \
                torch.enable_grad():
            for index, graph in self._graphs():
                # GGN: the chunk's loss is a mean over its u_c units, so weight u_c/U. Fisher:
                # Σₙ gₙ (gₙᵀv) over the chunk's examples, divided by N.
                weight = self.weight(index) if self.kind == "ggn" else 1 / self.num_examples
                for j in range(m):
                    _, back = self._jv_and_back(graph, v_parts[j])
                    gv = torch.autograd.grad(
                        graph[0], self.params, grad_outputs=back, retain_graph=True,
                        allow_unused=True,
                    )
                    self._accumulate(out[j], gv, weight, index)

    def chunk_quadratic_forms(self, vectors: Tensor) -> tuple[Tensor, Tensor]:
        """Per-chunk ``q[c, j] = vⱼᵀ G_c vⱼ`` (G_c over chunk c alone, as a mean over its
        examples, without weight decay) and the chunk sizes: what the eigenvalue standard error
        needs (see :meth:`HessianOperator.chunk_quadratic_forms`). GGN: ``(Jv)ᵀ H_out (Jv)``;
        Fisher: ``Σₙ (gₙᵀv)² / n_c``. One product per row, counted in ``n_matvecs``.
        """
        v_parts = self._vector_parts(vectors)
        m = len(v_parts)
        local = torch.zeros(len(self.chunks), m, dtype=torch.float64)
        error = None
        try:
            with semantics_mode(self.model, self.semantics), self._product_kernels(), \
                    torch.enable_grad():
                for index, graph in self._graphs():
                    n = self.chunks[index][2]
                    for j in range(m):
                        jv, back = self._jv_and_back(graph, v_parts[j])
                        q = float((jv.double() * back.double()).sum())
                        if not math.isfinite(q):
                            raise NonFiniteError(f"the quadratic form of chunk {index} is {q}")
                        local[index, j] = q if self.kind == "ggn" else q / n
        except NonFiniteError as err:
            error = err
        self._agree_on_failure(error)
        self.n_matvecs += m
        return self._gather_chunk_rows(local)

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
