"""Optimizers by config name (``optimizer.name`` in a run's config)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .nudged import FrozenTopSGD, NoTopSGD, NudgedSGD, TopOnlySGD

#: The fixed config names, in the order the docs list them.
OPTIMIZER_NAMES: tuple[str, ...] = ("sgd", "nsgd", "top_only", "no_top", "frozen_top")

_SUBSPACE_VARIANTS = {"top_only": TopOnlySGD, "no_top": NoTopSGD, "frozen_top": FrozenTopSGD}


def build_optimizer(
    name: str,
    params: Iterable[Tensor] | Iterable[dict[str, Any]],
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    gamma: float = 1.0,
    k: int | None = None,
    **options: Any,
) -> Optimizer:
    """Build the optimizer a config names.

    Args:
        name: ``"sgd"`` (``torch.optim.SGD``), ``"nsgd"`` (:class:`NudgedSGD`), or a Sec. 3.3
            variant ``"top_only"`` / ``"no_top"`` / ``"frozen_top"``.
        params, lr, momentum, weight_decay: as for ``torch.optim.SGD`` (weight decay is added
            to the gradient, PyTorch's convention).
        gamma: rate factor along the top-``k`` eigenvectors; used by ``"nsgd"`` only, and any
            other value than 1 with another name is rejected rather than silently ignored.
        k: eigenvectors used; ``None`` takes the paper's value for the name (5 for ``"nsgd"``,
            1 — the top eigenvector ``e₁`` — for the Sec. 3.3 variants). Ignored by ``"sgd"``.
        **options: passed on (``nesterov``, ``dampening``, and ``nudge`` for the subspace
            optimizers).

    Raises:
        ValueError: unknown ``name``, or ``gamma != 1`` with a name that has no ``γ``.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in OPTIMIZER_NAMES:
        raise ValueError(
            f"unknown optimizer {name!r}; expected one of: {', '.join(OPTIMIZER_NAMES)}"
        )
    if key != "nsgd" and gamma != 1.0:
        raise ValueError(
            f"gamma={gamma} has no effect with optimizer {key!r}; only 'nsgd' rescales the "
            "rate along the top eigenvectors (use name 'nsgd', or gamma 1)"
        )
    common = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, **options}
    if key == "sgd":
        return torch.optim.SGD(params, **common)
    if key == "nsgd":
        return NudgedSGD(params, gamma=gamma, k=5 if k is None else k, **common)
    return _SUBSPACE_VARIANTS[key](params, k=1 if k is None else k, **common)
