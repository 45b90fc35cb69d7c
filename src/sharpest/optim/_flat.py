"""Flat-vector views of an optimizer's parameters.

The eigenbasis handed to the optimizers is flat over the trainable parameters, in param-group
order (``model.parameters()`` order when a whole model is given), like the vectors of
``sharpest.curvature``. This module holds the two conversions the optimizers need; it is kept
private so that ``optim`` depends on torch alone (``sharpest.curvature`` has its own helpers).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor


def trainable_params(param_groups: Iterable[dict]) -> list[Tensor]:
    """The parameters that make up the flat layout, in order.

    Frozen tensors (``requires_grad=False``) are left out so that the layout matches the
    Hessian's, which is over trainable parameters only.
    """
    return [p for group in param_groups for p in group["params"] if p.requires_grad]


def flatten(
    tensors: Sequence[Tensor | None],
    like: Sequence[Tensor],
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """Concatenate ``tensors`` into one flat ``dtype`` vector on ``device``.

    ``None`` entries stand for missing gradients and become zeros shaped like the matching
    entry of ``like``, so that every parameter keeps its slot in the layout.
    """
    parts = [
        torch.zeros(p.numel(), dtype=dtype, device=device)
        if t is None
        else t.detach().reshape(-1).to(device=device, dtype=dtype)
        for t, p in zip(tensors, like, strict=True)
    ]
    if not parts:
        return torch.zeros(0, dtype=dtype, device=device)
    return torch.cat(parts)


def unflatten(vec: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a flat vector into tensors shaped, typed and placed like ``like``.

    Inverse of :func:`flatten` (up to the dtype cast back to each parameter's dtype).
    """
    numels = [p.numel() for p in like]
    if vec.numel() != sum(numels):
        raise ValueError(f"flat vector has {vec.numel()} entries, parameters have {sum(numels)}")
    return [
        chunk.view_as(p).to(device=p.device, dtype=p.dtype)
        for chunk, p in zip(torch.split(vec, numels), like, strict=True)
    ]
