"""What an optimizer's state says about curvature: its diagonal preconditioner and its threshold.

An adaptive optimizer steps ``θ ← θ − η P⁻¹ m`` with a diagonal P read from its state; on a
quadratic with Hessian H it is stable (with P frozen) while the eigenvalues of the
*preconditioned* Hessian P⁻¹H stay below a threshold that depends on its momentum (Cohen et
al., 2022, *Adaptive gradient methods at the edge of stability*). :func:`diagonal_preconditioner`
reads P exactly as ``torch.optim`` computes the denominator of its last step:

- ``Adam`` / ``AdamW``: ``P = √v̂ + ε`` with ``v̂ = v/(1 − β₂ᵗ)``, ``v`` = ``exp_avg_sq``
  (``max_exp_avg_sq`` with ``amsgrad``), ``t`` = the steps taken (``state["step"]``);
- ``RMSprop``: ``P = √v + ε`` with ``v`` = ``square_avg``, or ``square_avg − grad_avg²`` when
  ``centered`` (momentum changes the threshold, not P);
- ``Adagrad``: ``P = √G + ε`` with ``G`` = ``sum`` (the accumulated squared gradients).

:func:`stability_threshold` gives the matching line on λ(P⁻¹H) (on λ(H) for SGD), through the
torch-free formulas of :mod:`sharpest.paper_metrics` (the report draws the same ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from sharpest.errors import SharpestError
from sharpest.paper_metrics import adam_stability_threshold, sgd_stability_threshold

__all__ = [
    "PreconditionerError",
    "diagonal_preconditioner",
    "optimizer_kind",
    "stability_threshold",
    "unwrap",
]


class PreconditionerError(SharpestError, ValueError):
    """An optimizer whose state cannot give a diagonal preconditioner or a threshold."""


#: The optimizers :func:`diagonal_preconditioner` reads (by ``optimizer_kind``).
ADAPTIVE_KINDS = ("adam", "rmsprop", "adagrad")


#: Attributes under which wrappers hold the optimizer they wrap (sharpest's NudgedOptimizer:
#: ``base``; Lightning's LightningOptimizer and accelerate's AcceleratedOptimizer: ``optimizer``).
_WRAPPED = ("base", "optimizer", "_optimizer")


def unwrap(optimizer: Any) -> Any:
    """The optimizer that steps under wrappers (``base``, ``optimizer``, ``_optimizer``), so a
    nudged Adam is read as Adam; ``optimizer`` itself when it is no wrapper.
    """
    for _ in range(5):
        if _own_kind(optimizer) != "unknown":
            return optimizer
        inner = next((getattr(optimizer, a) for a in _WRAPPED
                      if isinstance(getattr(optimizer, a, None), torch.optim.Optimizer)),
                     None)  # fmt: skip
        if inner is None or inner is optimizer:
            return optimizer
        optimizer = inner
    return optimizer


def optimizer_kind(optimizer: Any) -> str:
    """``"adam"`` (Adam, AdamW), ``"rmsprop"``, ``"adagrad"``, ``"sgd"`` (``torch.optim.SGD`` and
    sharpest's subspace SGD family, e.g. ``NudgedSGD``), or ``"unknown"``; a wrapper (e.g.
    sharpest's ``NudgedOptimizer``) is read as the optimizer it wraps (:func:`unwrap`).
    """
    return _own_kind(unwrap(optimizer))


def _own_kind(optimizer: Any) -> str:
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return "adam"
    if isinstance(optimizer, torch.optim.RMSprop):
        return "rmsprop"
    if isinstance(optimizer, torch.optim.Adagrad):
        return "adagrad"
    # sharpest.optim lives in the same layer as curvature, so its classes go by name.
    if isinstance(optimizer, torch.optim.SGD) or any(
        c.__name__ == "SubspaceSGD" for c in type(optimizer).__mro__
    ):
        return "sgd"
    return "unknown"


def _groups(optimizer: Any) -> list[dict[str, Any]]:
    groups = [g for g in getattr(optimizer, "param_groups", []) if g.get("params")]
    if not groups:
        raise PreconditionerError(
            f"{type(optimizer).__name__} has no parameter groups with parameters"
        )
    return groups


def _shared(optimizer: Any, key: str) -> Any:
    """The value of hyperparameter ``key``, which every group must share."""
    values = {repr(g.get(key)) for g in _groups(optimizer)}
    if len(values) > 1:
        raise PreconditionerError(
            f"{type(optimizer).__name__}: the parameter groups differ in {key!r} "
            f"({', '.join(sorted(values))}); one stability threshold needs one value"
        )
    return _groups(optimizer)[0].get(key)


def _steps(optimizer: Any) -> int:
    """The largest ``state["step"]`` over the optimizer's parameters (0 before any step)."""
    steps = [float(s["step"]) for s in optimizer.state.values() if "step" in s]
    return int(max(steps)) if steps else 0


def stability_threshold(optimizer: Any) -> float:
    """The largest stable eigenvalue, at the optimizer's current learning rate η.

    - SGD (``torch.optim.SGD``, ``NudgedSGD`` and the subspace variants): ``2(1+μ)/η`` on λ(H)
      (μ momentum; ``2(1+μ)/((1−d)η)`` with dampening d; ``2(1+μ)/((1+2μ)η)`` with Nesterov);
      Nudged SGD's own rate γη along its top-k directions is not in this line (see
      :func:`sharpest.paper_metrics.sgd_stability_threshold` with ``gamma``);
    - RMSprop: ``2/η`` on λ(P⁻¹H), ``2(1+μ)/η`` with momentum μ (heavy ball on P⁻¹H);
    - Adam / AdamW: ``(2 + 2β₁)/((1 − β₁)η)`` on λ(P⁻¹H), 38/η at β₁ = 0.9;
    - Adagrad: ``2/η_t`` on λ(P⁻¹H), with η_t = η/(1 + t·lr_decay) the rate of its next step.

    The adaptive lines are Cohen et al., 2022 (*Adaptive gradient methods at the edge of
    stability*), for a frozen preconditioner. All parameter groups must share η and the
    momentum terms.

    Raises:
        PreconditionerError: another optimizer, or groups that disagree.
    """
    optimizer = unwrap(optimizer)
    kind = optimizer_kind(optimizer)
    lr = float(_shared(optimizer, "lr"))
    if kind == "sgd":
        return float(sgd_stability_threshold(
            lr, float(_shared(optimizer, "momentum") or 0.0),
            float(_shared(optimizer, "dampening") or 0.0),
            bool(_shared(optimizer, "nesterov")),
        ))  # fmt: skip
    if kind == "rmsprop":
        return float(sgd_stability_threshold(lr, float(_shared(optimizer, "momentum") or 0.0)))
    if kind == "adam":
        return float(adam_stability_threshold(lr, float(_shared(optimizer, "betas")[0])))
    if kind == "adagrad":
        decay = float(_shared(optimizer, "lr_decay") or 0.0)
        return float(sgd_stability_threshold(lr / (1.0 + _steps(optimizer) * decay)))
    raise PreconditionerError(
        f"no stability threshold for {type(optimizer).__name__}: known are SGD (and NudgedSGD), "
        "RMSprop, Adam, AdamW and Adagrad"
    )


def _denominator(kind: str, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
    """P for one parameter, float64, as ``torch.optim`` computes its step's denominator."""
    eps = float(group["eps"])
    if kind == "adam":
        beta2 = float(group["betas"][1])
        steps = float(state["step"])
        v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        v_hat = v.detach().double() / (1.0 - beta2**steps)
        return v_hat.sqrt() + eps
    if kind == "rmsprop":
        v = state["square_avg"].detach().double()
        if group.get("centered"):
            v = v - state["grad_avg"].detach().double() ** 2
        return v.sqrt() + eps
    return state["sum"].detach().double().sqrt() + eps  # adagrad


def diagonal_preconditioner(optimizer: Any, params: Sequence[Tensor]) -> Tensor:
    """The diagonal of P as one flat float64 vector over ``params`` (in their order, e.g.
    ``op.params``), read from the optimizer's state (see the module docstring).

    Raises:
        PreconditionerError: an optimizer other than Adam, AdamW, RMSprop, Adagrad; complex
            parameters; a parameter that is not among the optimizer's, or has no state yet
            (the optimizer has not stepped it: P is undefined before the first step).
    """
    optimizer = unwrap(optimizer)
    kind = optimizer_kind(optimizer)
    if kind not in ADAPTIVE_KINDS:
        raise PreconditionerError(
            f"no diagonal preconditioner in the state of {type(optimizer).__name__}: "
            "supported are Adam, AdamW, RMSprop and Adagrad (or pass the diagonal P as a tensor)"
        )
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    parts = []
    for i, p in enumerate(params):
        where = f"parameter {i} (shape {tuple(p.shape)})"
        group = group_of.get(id(p))
        if group is None:
            raise PreconditionerError(f"{where} is not among the optimizer's parameters")
        if p.is_complex():
            raise PreconditionerError(f"{where} is complex; only real parameters are supported")
        state = optimizer.state.get(p)
        # Adagrad fills its state at construction: step 0 means not stepped as well.
        if not state or ("step" in state and float(state["step"]) == 0):
            raise PreconditionerError(
                f"{where} has no {type(optimizer).__name__} state yet (not stepped): the "
                "preconditioner exists only after the optimizer's first step on it"
            )
        parts.append(_denominator(kind, group, state).reshape(-1))
    return torch.cat(parts)
