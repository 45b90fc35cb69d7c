"""Worst-case sharpness: how much the loss can rise within a ball of radius ρ around θ.

    S_ρ(θ) = max_{‖T⁻¹δ‖_p ≤ ρ} L(θ + δ) − L(θ)

with L the probe loss of :class:`sharpest.curvature.EmpiricalRisk` (mean over the fixed data,
evaluation semantics, the L2 term when a weight decay is given) and three choices of T and of
the data:

- ``kind="eps"`` — ε-sharpness (Keskar et al. 2017, "On large-batch training ...": the same
  maximum in a plain ball; T = I; reported here as the absolute rise, not their percentage);
- ``kind="adaptive"`` — adaptive sharpness (Kwon et al. 2021, ASAM; Andriushchenko et al.
  2023, "A modern look at the relationship between sharpness and generalization"): the ball
  is scaled elementwise by the weights, T = diag(|θ| + η) (η = ``eta``, 0 by default), so the
  measure does not change when a ReLU network's layers are rescaled;
- ``kind="m"`` — m-sharpness (Foret et al. 2021, SAM; Andriushchenko et al. 2023): the data is
  cut, in order, into ⌊N/m⌋ disjoint batches of m examples (a last incomplete batch is
  dropped), each batch B gets its *own* worst case max_δ L_B(θ + δ) − L_B(θ) in the plain ball
  (or the adaptive one with ``adaptive=True``), and the result is their mean.

The maximum is searched by projected, normalised gradient ascent in u = T⁻¹δ (‖u‖_p ≤ ρ,
p = ``norm`` ∈ {2, ∞}): the first step goes from u = 0 to the maximiser of the linearised
rise, ρ·ĝ with ĝ = T∇L/‖T∇L‖₂ (p = 2) or sign(T∇L) (p = ∞) — SAM's step, exact when L is
linear — and each further step moves u by ``step_size`` (default ρ) along that normalised
direction at the current point, then projects back onto the ball. The result is the largest
rise seen over the iterates (never below 0: δ = 0 is feasible), so it is a lower bound of the
true maximum that grows with ``steps``. At a point where the gradient vanishes the ascent
starts from a seeded random point of the sphere (the gradient gives no direction).

For small ρ at a minimum (∇L = 0), S_ρ ≈ ½ρ²λ₁ (p = 2, T = I) with λ₁ the top Hessian
eigenvalue; near, not at, a minimum S_ρ ≈ ρ‖∇L‖ + ½ρ²·(curvature along the gradient).
Cost: ``steps`` gradients and ``steps + 1`` losses over the data (per batch for m).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sharpest.curvature import EmpiricalRisk, NonFiniteError
from sharpest.probes.shift import ParameterShift

__all__ = [
    "SHARPNESS_KINDS",
    "SharpnessResult",
    "sharpness_of",
    "worst_case_sharpness",
    "worst_case_sharpness_result",
]

SHARPNESS_KINDS = ("eps", "adaptive", "m")
NORMS = (2.0, math.inf)

Batch = tuple[Any, Tensor]


@dataclass(frozen=True)
class SharpnessResult:
    """One worst-case sharpness measurement (see the module docstring).

    Attributes:
        value: S_ρ (for m: the mean over batches).
        loss0: L(θ) (for m: the batches' mean).
        kind: ``"eps"``, ``"adaptive"`` or ``"m"``.
        rho: the radius ρ.
        norm: p (2 or ``inf``).
        steps: the ascent steps.
        delta_norm: ‖T⁻¹δ‖_p of the best iterate (for m: the mean).
        num_batches: 1, or the m batches.
        n_gradients: passes over the data for gradients (per batch, summed).
        n_losses: passes over the data for losses (per batch, summed).
    """

    value: float
    loss0: float
    kind: str
    rho: float
    norm: float
    steps: int
    delta_norm: float
    num_batches: int
    n_gradients: int
    n_losses: int

    def record(self) -> dict[str, Any]:
        """The plain fields of a ``"probe"`` line."""
        return {
            "sharpness": self.value,
            "loss": self.loss0,
            "sharpness_kind": self.kind,
            "rho": self.rho,
            "norm": "inf" if math.isinf(self.norm) else self.norm,
            "steps": self.steps,
            "delta_norm": self.delta_norm,
            "num_batches": self.num_batches,
            "n_gradients": self.n_gradients,
            "n_losses": self.n_losses,
        }


def _check_norm(norm: float | str) -> float:
    value = math.inf if norm in ("inf", "Inf", math.inf) else float(norm)
    if value not in NORMS:
        raise ValueError(f"norm must be 2 or inf, got {norm!r}")
    return value


def _pnorm(u: Tensor, p: float) -> float:
    return float(u.abs().max()) if math.isinf(p) else float(u.norm())


def _steepest(g: Tensor, p: float) -> Tensor:
    """The unit-p-norm maximiser of ⟨g, u⟩: g/‖g‖₂ (p = 2) or sign(g) (p = ∞)."""
    if math.isinf(p):
        return torch.sign(g)
    return g / g.norm()


def _project(u: Tensor, rho: float, p: float) -> Tensor:
    if math.isinf(p):
        return u.clamp(-rho, rho)
    n = float(u.norm())
    return u if n <= rho else u * (rho / n)


def sharpness_of(
    op: EmpiricalRisk,
    rho: float,
    *,
    adaptive: bool = False,
    steps: int = 10,
    norm: float | str = 2,
    step_size: float | None = None,
    eta: float = 0.0,
    seed: int = 0,
) -> SharpnessResult:
    """Worst-case sharpness of the probe loss ``op`` at the model's parameters (one batch).

    The parameters hold θ again afterwards, bit for bit. See the module docstring.

    Args:
        op: the probe loss.
        rho: the radius ρ > 0 of the ball.
        adaptive: T = diag(|θ| + η) (adaptive sharpness) instead of T = I (ε-sharpness).
        steps: gradient ascent steps.
        norm: p, 2 or ``"inf"``.
        step_size: the length of each step after the first (default ρ).
        eta: η of the adaptive ball.
        seed: seeds the random start where the gradient vanishes.

    Raises:
        ValueError: ``rho``, ``steps``, ``step_size``, ``eta`` or ``norm`` out of range.
    """
    p = _check_norm(norm)
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be a finite number > 0, got {rho!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    alpha = float(rho if step_size is None else step_size)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"step_size must be a finite number > 0, got {step_size!r}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    with ParameterShift(op) as shift:
        theta = shift.theta.to(op.device)
        scale = (theta.abs() + eta) if adaptive else torch.ones_like(theta)
        loss0 = shift.loss()
        best, best_norm = 0.0, 0.0
        u = torch.zeros_like(theta)
        try:
            for step in range(steps):
                g = shift.gradient(scale * u if step else None) * scale
                if step == 0 and not float(g.abs().max()) > 0:
                    gen = torch.Generator().manual_seed(int(seed))
                    r = torch.randn(theta.shape, generator=gen, dtype=torch.float64)
                    g = r.to(theta.device)
                if float(g.abs().max()) > 0:
                    u = _project(u + (rho if step == 0 else alpha) * _steepest(g, p), rho, p)
                rise = shift.loss(scale * u) - loss0
                if rise > best:
                    best, best_norm = rise, _pnorm(u, p)
        except NonFiniteError:
            best, best_norm = math.inf, _pnorm(u, p)
        if math.isinf(best) or math.isnan(best):
            best = math.inf
        return SharpnessResult(
            value=float(best),
            loss0=float(loss0),
            kind="adaptive" if adaptive else "eps",
            rho=float(rho),
            norm=p,
            steps=int(steps),
            delta_norm=float(best_norm),
            num_batches=1,
            n_gradients=shift.n_grads,
            n_losses=shift.n_evals,
        )


def _concat(batches: list[Batch]) -> Batch:
    xs, ys = zip(*batches)
    if all(isinstance(x, Tensor) for x in xs):
        return torch.cat(list(xs)), torch.cat(list(ys))
    if all(isinstance(x, Mapping) for x in xs):
        return {k: torch.cat([x[k] for x in xs]) for k in xs[0]}, torch.cat(list(ys))
    raise TypeError("m-sharpness needs inputs that are tensors or Mappings of tensors")


def _split(data: Batch | Iterable[Batch], m: int) -> list[Batch]:
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], Tensor):
        batches = [data]
    else:
        batches = [tuple(b) for b in data]  # type: ignore[misc]
    inputs, targets = _concat(batches)  # type: ignore[arg-type]
    n = int(targets.shape[0])
    if m > n:
        raise ValueError(f"m = {m} is larger than the {n} examples of the data")

    def cut(x: Any, lo: int, hi: int) -> Any:
        return {k: v[lo:hi] for k, v in x.items()} if isinstance(x, Mapping) else x[lo:hi]

    return [(cut(inputs, s, s + m), targets[s : s + m]) for s in range(0, n - m + 1, m)]


def worst_case_sharpness_result(
    model: nn.Module,
    loss_fn: Callable[[Any, Tensor], Tensor],
    data: Batch | Iterable[Batch],
    rho: float,
    kind: str = "eps",
    steps: int = 10,
    *,
    norm: float | str = 2,
    m: int | None = None,
    adaptive: bool = False,
    step_size: float | None = None,
    eta: float = 0.0,
    weight_decay: float = 0.0,
    decay_params: Sequence[Tensor] | Sequence[str] | None = None,
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> SharpnessResult:
    """:func:`worst_case_sharpness` with its details (a :class:`SharpnessResult`)."""
    if kind not in SHARPNESS_KINDS:
        raise ValueError(f"kind must be one of {SHARPNESS_KINDS}, got {kind!r}")
    options = {"steps": steps, "norm": norm, "step_size": step_size, "eta": eta}
    risk = {"chunk_size": chunk_size, "device": device, "decay_params": decay_params}
    if kind != "m":
        if m is not None:
            raise ValueError(f"m is an option of kind='m' only (kind={kind!r})")
        op = EmpiricalRisk(model, loss_fn, data, weight_decay, **risk)
        return sharpness_of(op, rho, adaptive=kind == "adaptive", seed=seed, **options)
    if m is None or int(m) < 1:
        raise ValueError(f"kind='m' needs m, a batch size >= 1, got {m!r}")
    results = [
        sharpness_of(
            EmpiricalRisk(model, loss_fn, batch, weight_decay, **risk),
            rho, adaptive=adaptive, seed=seed + b, **options,
        )
        for b, batch in enumerate(_split(data, int(m)))
    ]
    n = len(results)
    return SharpnessResult(
        value=sum(r.value for r in results) / n,
        loss0=sum(r.loss0 for r in results) / n,
        kind="m",
        rho=float(rho),
        norm=results[0].norm,
        steps=int(steps),
        delta_norm=sum(r.delta_norm for r in results) / n,
        num_batches=n,
        n_gradients=sum(r.n_gradients for r in results),
        n_losses=sum(r.n_losses for r in results),
    )


def worst_case_sharpness(
    model: nn.Module,
    loss_fn: Callable[[Any, Tensor], Tensor],
    data: Batch | Iterable[Batch],
    rho: float,
    kind: str = "eps",
    steps: int = 10,
    **options: Any,
) -> float:
    """max over ‖T⁻¹δ‖_p ≤ ρ of L(θ + δ) − L(θ), by ``steps`` projected ascent steps.

    Args:
        model: The network at θ (its parameters are restored afterwards, bit for bit).
        loss_fn: ``loss_fn(outputs, targets)``, the mean over the batch.
        data: One ``(inputs, targets)`` pair or an iterable of them (fixed).
        rho: The radius ρ > 0 of the ball.
        kind: ``"eps"`` (ε-sharpness, T = I), ``"adaptive"`` (T = diag(|θ| + η)) or ``"m"``
            (the mean over disjoint batches of ``m`` examples of each batch's own maximum).
        steps: Gradient ascent steps (each one gradient and one loss over the data).
        **options: ``norm`` (2 or ``"inf"``), ``m``, ``adaptive`` (for m), ``step_size``
            (default ρ), ``eta``, ``weight_decay``, ``decay_params``, ``chunk_size``,
            ``device``, ``seed``.

    Returns:
        The largest rise found (a lower bound of the maximum; ``inf`` if the loss diverged).
    """
    return worst_case_sharpness_result(model, loss_fn, data, rho, kind, steps, **options).value
