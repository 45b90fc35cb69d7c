"""Optimizers by config name (``optimizer.name`` in a run's config)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .nudged import FrozenTopSGD, NoTopSGD, NudgedSGD, TopOnlySGD
from .steered import NudgedOptimizer

#: The fixed config names, in the order the docs list them.
OPTIMIZER_NAMES: tuple[str, ...] = (
    "sgd", "nsgd", "top_only", "no_top", "frozen_top", "adam", "adamw", "rmsprop")
#: The update rules ``"nsgd"`` can nudge (``nudge_base``); ``"sgd"`` is :class:`NudgedSGD`.
NUDGE_BASES: tuple[str, ...] = ("sgd", "adam", "adamw", "rmsprop")
#: The optimizers with moment estimates, configured by ``betas`` and ``eps``.
ADAPTIVE: tuple[str, ...] = ("adam", "adamw", "rmsprop")

_SUBSPACE_VARIANTS = {"top_only": TopOnlySGD, "no_top": NoTopSGD, "frozen_top": FrozenTopSGD}


def _adaptive(
    name: str,
    params: Any,
    lr: float,
    momentum: float,
    weight_decay: float,
    betas: tuple[float, float] | None,
    eps: float | None,
    options: dict[str, Any],
) -> Optimizer:
    """Adam / AdamW / RMSprop as torch builds them; ``None`` keeps torch's default."""
    if options:
        raise ValueError(f"option(s) {', '.join(sorted(options))} do not apply to {name!r}")
    kw: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if eps is not None:
        kw["eps"] = eps
    if name == "rmsprop":
        # RMSprop keeps no first-moment average; its second-moment decay α is β₂.
        if betas is not None:
            if betas[0] != 0.0:
                raise ValueError(
                    f"betas[0]={betas[0]}: rmsprop has no first-moment average (its momentum "
                    "is `momentum`); give betas as [0, alpha]"
                )
            kw["alpha"] = betas[1]
        return torch.optim.RMSprop(params, momentum=momentum, **kw)
    if momentum != 0.0:
        raise ValueError(
            f"momentum={momentum} has no effect with {name!r}: its first-moment decay is "
            "betas[0]; set momentum to 0"
        )
    if betas is not None:
        kw["betas"] = tuple(betas)
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(params, **kw)


def build_optimizer(
    name: str,
    params: Iterable[Tensor] | Iterable[dict[str, Any]],
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    gamma: float = 1.0,
    k: int | None = None,
    *,
    betas: tuple[float, float] | None = None,
    eps: float | None = None,
    nudge_base: str = "sgd",
    **options: Any,
) -> Optimizer:
    """Build the optimizer a config names.

    Args:
        name: ``"sgd"`` (``torch.optim.SGD``), ``"nsgd"`` (:class:`NudgedSGD`, or the
            ``nudge_base`` optimizer wrapped in :class:`NudgedOptimizer`), a Sec. 3.3 variant
            ``"top_only"`` / ``"no_top"`` / ``"frozen_top"``, or ``"adam"``, ``"adamw"``,
            ``"rmsprop"`` (``torch.optim``'s).
        params: the parameters (or parameter groups), as for any ``torch.optim`` optimizer.
        lr: the learning rate η, as for any ``torch.optim`` optimizer.
        momentum: SGD's and RMSprop's heavy-ball momentum; must be 0 for Adam/AdamW (their
            first-moment decay is ``betas[0]``).
        weight_decay: as torch passes it: added to the gradient (SGD, Adam, RMSprop: the L2
            term (wd/2)‖θ‖²) or decoupled, ``θ ← θ − η·wd·θ`` (AdamW).
        gamma: rate factor along the top-``k`` eigenvectors; used by ``"nsgd"`` only, and any
            other value than 1 with another name is rejected rather than silently ignored.
        k: eigenvectors used; ``None`` takes the paper's value for the name (5 for ``"nsgd"``,
            1 — the top eigenvector ``e₁`` — for the Sec. 3.3 variants). Ignored by the others.
        betas: Adam/AdamW ``(β₁, β₂)``; RMSprop ``(0, α)``; ``None``: torch's defaults.
        eps: the adaptive optimizers' ε (``None``: torch's default, 1e-8).
        nudge_base: the update ``"nsgd"`` nudges: ``"sgd"`` (:class:`NudgedSGD`, the paper's),
            ``"adam"``, ``"adamw"``, ``"rmsprop"`` (:class:`NudgedOptimizer` around it).
        **options: passed on (``nesterov``, ``dampening``, and ``nudge`` for the SGD-based
            steering optimizers; an adaptive base admits only ``nudge="step"``).

    Raises:
        ValueError: unknown ``name`` or ``nudge_base``, or a setting the named optimizer has
            no use for (``gamma != 1`` without ``"nsgd"``, ``betas``/``eps`` for SGD, momentum
            for Adam).
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
    if nudge_base not in NUDGE_BASES:
        raise ValueError(f"nudge_base must be one of {', '.join(NUDGE_BASES)}; got "
                         f"{nudge_base!r}")
    if nudge_base != "sgd" and key != "nsgd":
        raise ValueError(f"nudge_base={nudge_base!r} applies to 'nsgd' only, not {key!r}")
    base = nudge_base if key == "nsgd" else key
    if base in ADAPTIVE:
        if key == "nsgd":
            if options.pop("nudge", "step") != "step":
                raise ValueError(
                    f"nudge: a nudged {base!r} rescales its update (nudge 'step'); 'gradient' "
                    "and 'both' exist for SGD only"
                )
            inner = _adaptive(base, params, lr, momentum, weight_decay, betas, eps, options)
            return NudgedOptimizer(inner, gamma=gamma, k=5 if k is None else k)
        return _adaptive(base, params, lr, momentum, weight_decay, betas, eps, options)
    for value, what in ((betas, "betas"), (eps, "eps")):
        if value is not None:
            raise ValueError(f"{what} has no effect with optimizer {key!r} (SGD-based); only "
                             f"{', '.join(ADAPTIVE)} use it")
    common = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, **options}
    if key == "sgd":
        return torch.optim.SGD(params, **common)
    if key == "nsgd":
        return NudgedSGD(params, gamma=gamma, k=5 if k is None else k, **common)
    return _SUBSPACE_VARIANTS[key](params, k=1 if k is None else k, **common)
