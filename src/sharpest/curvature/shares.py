"""Which parameter tensors an eigenvector lives in: per-layer shares of ‖eᵢ‖².

For a flat vector e over the parameters θ = (θ₁, …, θ_T) (``model.parameters()`` order), the
share of tensor t is ``‖e[t]‖² / ‖e‖²``; the shares of one vector are non-negative and sum to 1.

The record form is ``{name: [share of e₁, share of e₂, …]}`` (one list per named tensor, indexed
by eigenvector rank), so ``pandas.DataFrame(line["layer_shares"])`` has one row per eigenvector
and one column per tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["layer_shares", "operator_layer_shares", "parameter_names"]


def parameter_names(model: nn.Module, params: Sequence[Tensor]) -> list[str]:
    """The names (as in ``model.named_parameters()``) of the tensors ``params``, in order."""
    by_id = {id(p): name for name, p in model.named_parameters()}
    missing = [i for i, p in enumerate(params) if id(p) not in by_id]
    if missing:
        raise ValueError(f"params {missing} are not parameters of the model")
    return [by_id[id(p)] for p in params]


def layer_shares(
    vectors: Tensor, names: Sequence[str], sizes: Sequence[int], digits: int | None = 6
) -> dict[str, list[float]]:
    """``{name: [‖eᵢ[name]‖² / ‖eᵢ‖² for each row eᵢ of vectors]}``.

    Args:
        vectors: the rows eᵢ, flat over the named tensors.
        names: the tensors' names.
        sizes: entries of each named tensor, in the order the flat vectors concatenate them.
        digits: significant digits kept (records stay small); None keeps full precision.
    """
    if vectors.dim() == 1:
        vectors = vectors.unsqueeze(0)
    if len(names) != len(sizes):
        raise ValueError(f"{len(names)} names but {len(sizes)} sizes")
    if vectors.dim() != 2 or vectors.shape[1] != sum(sizes):
        raise ValueError(
            f"vectors must have shape (k, {sum(sizes)}) for these tensors, got "
            f"{tuple(vectors.shape)}"
        )
    sq = vectors.detach().to(torch.float64).pow(2)
    total = sq.sum(dim=1)
    if (total == 0).any():
        raise ValueError("a zero vector has no layer shares")
    parts = torch.split(sq, list(sizes), dim=1)
    out = {}
    for name, part in zip(names, parts):
        share = (part.sum(dim=1) / total).cpu().tolist()
        out[name] = [float(f"{s:.{digits}g}") if digits else float(s) for s in share]
    return out


def operator_layer_shares(op: object, vectors: Tensor, digits: int | None = 6) -> dict:
    """:func:`layer_shares` over the parameters of a :class:`HessianOperator` (or GGN)."""
    params = op.params  # type: ignore[attr-defined]
    names = parameter_names(op.model, params)  # type: ignore[attr-defined]
    return layer_shares(vectors, names, [p.numel() for p in params], digits)
